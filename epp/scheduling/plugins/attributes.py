"""Named numeric endpoint attributes, as llm-d's attribute filters and scorers address them.

An attribute is looked up in the endpoint's ``attributes`` (written by data sources such as the DCGM
poller: ``GPUUtilization`` …), else among the engine metrics epp scrapes, under the names llm-d's metrics
extractors give them (``num_requests_running``, ``custom.queue_depth`` …). Stale engine metrics count
as missing, never as a fresh zero.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from types import MappingProxyType

from epp.datastore import EndpointMetrics, EndpointState

_ENGINE: Mapping[str, Callable[[EndpointMetrics], float]] = MappingProxyType({
    "num_requests_running": lambda m: float(m.running),
    "num_requests_waiting": lambda m: float(m.waiting),
    "kv_cache_usage_perc": lambda m: m.kv_usage,
    "custom.queue_depth": lambda m: float(m.waiting),
    "custom.running_requests": lambda m: float(m.running),
    "custom.kv_cache_utilization": lambda m: m.kv_usage,
    "WaitingQueueSize": lambda m: float(m.waiting),
    "RunningRequestsSize": lambda m: float(m.running),
    "KVCacheUsagePercent": lambda m: m.kv_usage,
})


def attribute(state: EndpointState, key: str) -> float | None:
    """The endpoint's value of ``key``, or None when it has none (or only a stale one)."""
    value = state.attributes.get(key)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    read = _ENGINE.get(key)
    if read is None or state.stale or state.metrics is None:
        return None
    return read(state.metrics)
