"""``sglang-imbalance-filter``: SGLang router's load-balance override, as a filter.

With load = requests epp has in flight to each candidate (the router's own per-worker count), the
pool is imbalanced when max − min > ``balanceAbsThreshold`` and max > min × ``balanceRelThreshold``;
then only the least-loaded candidates pass (shortest queue), otherwise all pass and the cache-aware
scorer decides. Defaults are the current sgl-router's (``router_args.py``): 64 and 1.5 (older
releases used 32 and 1.0001).
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

SGLANG_IMBALANCE_FILTER = "sglang-imbalance-filter"


@dataclass(frozen=True, slots=True)
class ImbalanceParams:
    balance_abs_threshold: int = 64
    balance_rel_threshold: float = 1.5

    def __post_init__(self) -> None:
        if self.balance_abs_threshold < 0:
            raise ParamError("balanceAbsThreshold", "must not be negative")
        if self.balance_rel_threshold < 1.0:
            raise ParamError("balanceRelThreshold", "must be at least 1")


class SGLangImbalanceFilter:
    def __init__(self, name: str = SGLANG_IMBALANCE_FILTER, params: ImbalanceParams | None = None) -> None:
        self.typed_name = TypedName(SGLANG_IMBALANCE_FILTER, name)
        self.params = params or ImbalanceParams()

    def filter(self, cycle: CycleState, request: LLMRequest, endpoints: list[EndpointState]) -> list[EndpointState]:
        loads = [e.inflight_requests for e in endpoints]
        hi, lo = max(loads), min(loads)
        p = self.params
        if hi - lo > p.balance_abs_threshold and hi > lo * p.balance_rel_threshold:
            return [e for e, load in zip(endpoints, loads) if load == lo]
        return endpoints


def factory(name: str, params: Mapping[str, Any], handle: PluginHandle) -> SGLangImbalanceFilter:
    return SGLangImbalanceFilter(name, decode_params(ImbalanceParams, params))
