"""``multicluster-kv-cache-utilization-scorer`` (llm-d, alpha): prefer clusters whose pool has free KV
cache: 1 − ``multicluster.kv_cache_utilization`` (clamped to [0, 1]); a cluster that reports none scores 0.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from epp.datastore import EndpointState
from epp.request import LLMRequest
from epp.plugin.typed_name import TypedName
from epp.scheduling.framework import CycleState
from epp.plugin.params import NoParams, decode_params
from epp.scheduling.plugins.attributes import attribute
from epp.contracts.attributes import KV_CACHE_ATTRIBUTE
from epp.plugin.registry import PluginHandle

MULTICLUSTER_KV_CACHE_SCORER = "multicluster-kv-cache-utilization-scorer"


class MultiClusterKVCacheScorer:
    def __init__(self, name: str = MULTICLUSTER_KV_CACHE_SCORER) -> None:
        self.typed_name = TypedName(MULTICLUSTER_KV_CACHE_SCORER, name)

    def score(self, cycle: CycleState, request: LLMRequest, endpoints: list[EndpointState]) -> list[float]:
        values = [attribute(e, KV_CACHE_ATTRIBUTE) for e in endpoints]
        return [0.0 if v is None else 1.0 - min(1.0, max(0.0, v)) for v in values]


def factory(name: str, params: Mapping[str, Any], handle: PluginHandle) -> MultiClusterKVCacheScorer:
    decode_params(NoParams, params)
    return MultiClusterKVCacheScorer(name)
