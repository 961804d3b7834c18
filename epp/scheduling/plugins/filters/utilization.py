"""``utilization-filter`` (llm-d ``filter/utilization``): drop endpoints over any configured cap.

``conditions`` is a list of ``{metric, maxValue}``; an endpoint passes when every metric is ≤ its
``maxValue``. Metrics: ``running-requests`` and ``waiting-queue`` (engine gauges), ``kv-cache-utilization``
(0–1), ``active-requests`` (requests in flight from this picker: the ``inflight-load-producer`` named by
``inFlightLoadProducerName`` or configured, else epp's own count). A metric the endpoint does not report
(never scraped, or stale) counts as 0, so a missing scrape never drops a pod by itself — the health
layer handles dead ones. With ``fallbackOnEmpty`` an empty result gives back every candidate.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from epp.datastore import EndpointState
from epp.request import LLMRequest
from epp.plugin.typed_name import TypedName
from epp.scheduling.framework import CycleState
from epp.plugin.params import ParamError, decode_params
from epp.scheduling.plugins.producers.inflight_load import InFlightLoadProducer, find_inflight_load
from epp.plugin.registry import PluginHandle

UTILIZATION_FILTER = "utilization-filter"
ENGINE_METRICS = ("running-requests", "waiting-queue", "kv-cache-utilization")
METRICS = ("active-requests", *ENGINE_METRICS)


@dataclass(frozen=True, slots=True)
class UtilizationFilterParams:
    conditions: list[dict[str, Any]] = field(default_factory=list)
    fallback_on_empty: bool = False
    in_flight_load_producer_name: str | None = None


def _conditions(raw: list[dict[str, Any]]) -> list[tuple[str, float]]:
    out = []
    for i, cond in enumerate(raw):
        where = f"conditions[{i}]"
        unknown = set(cond) - {"metric", "maxValue"}
        if unknown:
            raise ParamError(f"{where}.{sorted(unknown)[0]}", "unknown field (known: maxValue, metric)")
        metric, limit = cond.get("metric"), cond.get("maxValue")
        if metric not in METRICS:
            raise ParamError(f"{where}.metric", f"must be one of {', '.join(METRICS)}")
        if isinstance(limit, bool) or not isinstance(limit, (int, float)) or limit < 0:
            raise ParamError(f"{where}.maxValue", "must be a non-negative number")
        out.append((metric, float(limit)))
    return out


class UtilizationFilter:
    def __init__(self, name: str, params: UtilizationFilterParams, load: InFlightLoadProducer | None = None) -> None:
        self.typed_name = TypedName(UTILIZATION_FILTER, name)
        self.conditions = _conditions(params.conditions)
        self.fallback_on_empty = params.fallback_on_empty
        self.load = load

    def _reader(self, metric: str) -> Callable[[EndpointState], float]:
        if metric == "active-requests":
            load = self.load
            return (lambda e: float(e.inflight_requests)) if load is None else (lambda e: float(load.load(e.name).requests))
        field_of = {"running-requests": "running", "waiting-queue": "waiting", "kv-cache-utilization": "kv_usage"}[metric]
        return lambda e: 0.0 if e.stale or e.metrics is None else float(getattr(e.metrics, field_of))

    def filter(self, cycle: CycleState, request: LLMRequest, endpoints: list[EndpointState]) -> list[EndpointState]:
        checks = [(self._reader(m), limit) for m, limit in self.conditions]
        kept = [e for e in endpoints if all(read(e) <= limit for read, limit in checks)]
        if not kept and self.fallback_on_empty:
            return endpoints
        return kept


def factory(name: str, params: Mapping[str, Any], handle: PluginHandle) -> UtilizationFilter:
    p = decode_params(UtilizationFilterParams, params)
    return UtilizationFilter(name, p, find_inflight_load(handle, p.in_flight_load_producer_name, "inFlightLoadProducerName"))
