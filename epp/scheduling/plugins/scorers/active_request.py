"""``active-request-scorer``: prefer endpoints with fewer requests in flight from this epp.

Score = 1 when in-flight ≤ ``idleThreshold``, else (max − c) / max × ``maxBusyScore`` over the
candidates, as llm-d's scorer defines it. Uses epp's own counters, so it reacts before the next scrape.
"""

from __future__ import annotations

from epp.datastore import EndpointState
from epp.request import LLMRequest
from epp.scheduling.framework import CycleState, TypedName

ACTIVE_REQUEST_SCORER = "active-request-scorer"


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
