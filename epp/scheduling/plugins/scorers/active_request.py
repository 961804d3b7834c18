"""``active-request-scorer``: prefer endpoints with fewer requests in flight from this epp.

Score = 1 when in-flight ≤ ``idleThreshold``, else (max − c) / max × ``maxBusyScore`` over the
candidates, as llm-d's scorer defines it. Uses epp's own counters, so it reacts before the next
scrape; not metric-based, so staleness does not apply.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from epp.datastore import EndpointState
from epp.request import LLMRequest
from epp.plugin.typed_name import TypedName
from epp.scheduling.framework import CycleState
from epp.plugin.params import ParamError, decode_params
from epp.plugin.registry import PluginHandle

ACTIVE_REQUEST_SCORER = "active-request-scorer"


@dataclass(frozen=True, slots=True)
class ActiveRequestParams:
    idle_threshold: int = 0
    max_busy_score: float = 1.0

    def __post_init__(self) -> None:
        if self.idle_threshold < 0:
            raise ParamError("idleThreshold", "must not be negative")
        if not 0.0 <= self.max_busy_score <= 1.0:
            raise ParamError("maxBusyScore", "must be between 0 and 1")


class ActiveRequestScorer:
    def __init__(self, name: str = ACTIVE_REQUEST_SCORER, idle_threshold: int = 0, max_busy_score: float = 1.0):
        self.typed_name = TypedName(ACTIVE_REQUEST_SCORER, name)
        self.idle_threshold = idle_threshold
        self.max_busy_score = max_busy_score

    def score(self, cycle: CycleState, request: LLMRequest, endpoints: list[EndpointState]) -> list[float]:
        counts = [e.inflight_requests for e in endpoints]
        peak = max(counts)
        if peak <= self.idle_threshold:
            return [1.0] * len(counts)
        busy = self.max_busy_score
        return [1.0 if c <= self.idle_threshold else (peak - c) / peak * busy for c in counts]


def factory(name: str, params: Mapping[str, Any], handle: PluginHandle) -> ActiveRequestScorer:
    p = decode_params(ActiveRequestParams, params)
    return ActiveRequestScorer(name, p.idle_threshold, p.max_busy_score)
