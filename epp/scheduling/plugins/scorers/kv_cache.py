"""``kv-cache-utilization-scorer``: prefer endpoints with free KV-cache memory.

Score = 1 − kv, with kv the engine's KV-cache usage in [0, 1]. Stale or missing metrics → 0.5.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from epp.datastore import EndpointState
from epp.request import LLMRequest
from epp.plugin.typed_name import TypedName
from epp.scheduling.framework import CycleState
from epp.plugin.params import NoParams, decode_params
from epp.scheduling.plugins.scorers._common import NEUTRAL
from epp.plugin.registry import PluginHandle

KV_CACHE_UTILIZATION_SCORER = "kv-cache-utilization-scorer"


class KVCacheUtilizationScorer:
    def __init__(self, name: str = KV_CACHE_UTILIZATION_SCORER) -> None:
        self.typed_name = TypedName(KV_CACHE_UTILIZATION_SCORER, name)

    def score(self, cycle: CycleState, request: LLMRequest, endpoints: list[EndpointState]) -> list[float]:
        return [NEUTRAL if e.stale or e.metrics is None else 1.0 - e.metrics.kv_usage for e in endpoints]


def factory(name: str, params: Mapping[str, Any], handle: PluginHandle) -> KVCacheUtilizationScorer:
    decode_params(NoParams, params)
    return KVCacheUtilizationScorer(name)
