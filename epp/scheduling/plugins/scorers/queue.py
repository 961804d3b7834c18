"""``queue-scorer``: prefer endpoints with shorter engine waiting queues.

Score = (max − q) / (max − min) of the waiting-queue length q over the candidates (all equal → 1), as
GIE's queue scorer. Stale or missing metrics → 0.5, outside the min/max (see ``_common``).
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

QUEUE_SCORER = "queue-scorer"


class QueueScorer:
    def __init__(self, name: str = QUEUE_SCORER) -> None:
        self.typed_name = TypedName(QUEUE_SCORER, name)

    def score(self, cycle: CycleState, request: LLMRequest, endpoints: list[EndpointState]) -> list[float]:
        return inverse_min_max([None if e.stale or e.metrics is None else e.metrics.waiting for e in endpoints])


def factory(name: str, params: Mapping[str, Any], handle: PluginHandle) -> QueueScorer:
    decode_params(NoParams, params)
    return QueueScorer(name)
