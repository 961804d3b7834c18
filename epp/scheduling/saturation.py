"""Pool saturation: is there room for more work? Used to shed sheddable requests and as a filter.

``utilization-detector`` (GIE's default detector):

* endpoint utilisation u = max(waiting / ``queueDepthThreshold``, kv_usage / ``kvCacheUtilThreshold``);
  metrics older than ``metricsStalenessThreshold`` (200 ms, judged on the injected clock), stale or
  missing → u = 1.0 (an endpoint that stopped reporting counts as full);
* pool saturation = mean u over the endpoints; no endpoints → 1.0; saturated ⇔ saturation ≥ 1.0.
  The director sheds priority < 0 requests with 429 while ``is_saturated`` holds.
* as a Filter it keeps endpoints with fresh metrics, waiting ≤ queueDepthThreshold × (1 + headroom)
  and kv ≤ kvCacheUtilThreshold × (1 + headroom); if that leaves none, it keeps all, so saturation
  alone never turns into a 429 here and a dead endpoint never blocks a pick.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from epp._util.clock import Clock
from epp.datastore import EndpointState
from epp.request import LLMRequest
from epp.plugin.typed_name import TypedName
from epp.scheduling.framework import CycleState
from epp.plugin.params import Duration, ParamError, decode_params
from epp.plugin.registry import PluginHandle

UTILIZATION_DETECTOR = "utilization-detector"


@runtime_checkable
class SaturationDetector(Protocol):
    """What admission needs to know about the pool."""

    def saturation(self, endpoints: Sequence[EndpointState]) -> float:
        """0 = idle, ≥ 1 = saturated."""
        ...

    def is_saturated(self, endpoints: Sequence[EndpointState]) -> bool: ...


@dataclass(frozen=True, slots=True)
class UtilizationParams:
    queue_depth_threshold: int = 5
    kv_cache_util_threshold: float = 0.8
    metrics_staleness_threshold: Duration = Duration(0.2)
    headroom: float = 0.0

    def __post_init__(self) -> None:
        if self.queue_depth_threshold < 1:
            raise ParamError("queueDepthThreshold", "must be at least 1")
        if not 0.0 < self.kv_cache_util_threshold <= 1.0:
            raise ParamError("kvCacheUtilThreshold", "must be in (0, 1]")
        if self.headroom < 0:
            raise ParamError("headroom", "must not be negative")


class UtilizationDetector:
    def __init__(self, clock: Clock, name: str = UTILIZATION_DETECTOR, params: UtilizationParams | None = None) -> None:
        self.typed_name = TypedName(UTILIZATION_DETECTOR, name)
        self.clock = clock
        self.params = params or UtilizationParams()

    def utilization(self, state: EndpointState, now: float) -> float:
        m = state.metrics
        p = self.params
        if state.stale or m is None or now - m.scraped_at > p.metrics_staleness_threshold:
            return 1.0
        return max(m.waiting / p.queue_depth_threshold, m.kv_usage / p.kv_cache_util_threshold)

    def saturation(self, endpoints: Sequence[EndpointState]) -> float:
        if not endpoints:
            return 1.0
        now = self.clock.now()
        return sum(self.utilization(e, now) for e in endpoints) / len(endpoints)

    def is_saturated(self, endpoints: Sequence[EndpointState]) -> bool:
        return self.saturation(endpoints) >= 1.0

    def filter(self, cycle: CycleState, request: LLMRequest, endpoints: list[EndpointState]) -> list[EndpointState]:
        p = self.params
        now = self.clock.now()
        queue_limit = p.queue_depth_threshold * (1.0 + p.headroom)
        kv_limit = p.kv_cache_util_threshold * (1.0 + p.headroom)
        stale_after = p.metrics_staleness_threshold
        kept = [
            e for e in endpoints
            if not e.stale and e.metrics is not None and now - e.metrics.scraped_at <= stale_after
            and e.metrics.waiting <= queue_limit and e.metrics.kv_usage <= kv_limit
        ]
        return kept or endpoints


def factory(name: str, params: Mapping[str, Any], handle: PluginHandle) -> UtilizationDetector:
    return UtilizationDetector(handle.clock, name, decode_params(UtilizationParams, params))
