"""``multicluster-queue-scorer`` (llm-d, alpha): rank cluster endpoints by their pool's average queue
(``multicluster.queue_size`` from the multicluster metrics extractor), min-max over the candidates that
report it: shortest 1, longest 0, all equal 1; a cluster that reports none scores 0.
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
from epp.contracts.attributes import QUEUE_SIZE_ATTRIBUTE
from epp.plugin.registry import PluginHandle

MULTICLUSTER_QUEUE_SCORER = "multicluster-queue-scorer"


class MultiClusterQueueScorer:
    def __init__(self, name: str = MULTICLUSTER_QUEUE_SCORER) -> None:
        self.typed_name = TypedName(MULTICLUSTER_QUEUE_SCORER, name)

    def score(self, cycle: CycleState, request: LLMRequest, endpoints: list[EndpointState]) -> list[float]:
        queues = [attribute(e, QUEUE_SIZE_ATTRIBUTE) for e in endpoints]
        known = [q for q in queues if q is not None]
        if not known:
            return [0.0] * len(endpoints)
        lo, hi = min(known), max(known)
        return [0.0 if q is None else 1.0 if hi == lo else (hi - q) / (hi - lo) for q in queues]


def factory(name: str, params: Mapping[str, Any], handle: PluginHandle) -> MultiClusterQueueScorer:
    decode_params(NoParams, params)
    return MultiClusterQueueScorer(name)
