"""Scheduling: profiles of filters → weighted scorers → picker, run by a profile handler.

Plugins only read the datastore's ``EndpointState`` views and the parsed ``LLMRequest``; no gRPC,
HTTP or Kubernetes here, so policies run the same inside ``epp serve`` and in offline replay.
"""

from epp.scheduling.framework import (
    CycleState,
    Filter,
    Picker,
    PreRequest,
    ProfileHandler,
    ProfileResult,
    ResponseComplete,
    ResponseStarted,
    SchedulingResult,
    Scorer,
)
from epp.scheduling.profile import SchedulerProfile
from epp.scheduling.scheduler import Scheduler

__all__ = [
    "CycleState",
    "Filter",
    "Picker",
    "PreRequest",
    "ProfileHandler",
    "ProfileResult",
    "ResponseComplete",
    "ResponseStarted",
    "Scheduler",
    "SchedulerProfile",
    "SchedulingResult",
    "Scorer",
]
