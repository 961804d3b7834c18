"""``running-requests-size-scorer``: prefer endpoints running fewer requests.

Score = (max − r) / (max − min) of the engine's running-request count r over the candidates (all
equal → 1), as GIE's scorer. Stale or missing metrics → 0.5, outside the min/max (see ``_common``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from epp.datastore import EndpointState
from epp.request import LLMRequest
from epp.plugin.typed_name import TypedName
from epp.scheduling.framework import CycleState
from epp.plugin.params import NoParams, decode_params
from epp.scheduling.plugins.scorers._common import inverse_min_max
from epp.plugin.registry import PluginHandle

RUNNING_REQUESTS_SCORER = "running-requests-size-scorer"


class RunningRequestsScorer:
    def __init__(self, name: str = RUNNING_REQUESTS_SCORER) -> None:
        self.typed_name = TypedName(RUNNING_REQUESTS_SCORER, name)

    def score(self, cycle: CycleState, request: LLMRequest, endpoints: list[EndpointState]) -> list[float]:
        return inverse_min_max([None if e.stale or e.metrics is None else e.metrics.running for e in endpoints])


def factory(name: str, params: Mapping[str, Any], handle: PluginHandle) -> RunningRequestsScorer:
    decode_params(NoParams, params)
    return RunningRequestsScorer(name)
