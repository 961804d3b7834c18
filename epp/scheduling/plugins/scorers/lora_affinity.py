"""``lora-affinity-scorer``: prefer endpoints where the requested LoRA adapter is (or can be) loaded.

Score, checked in this order as GIE: adapter active → 1.0; room to load one more adapter
(active + waiting < max_lora) → 0.8; adapter waiting to load → 0.6; otherwise 0. An endpoint that
reports no LoRA data (max_lora unknown) or whose metrics are stale → 0.5.
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

LORA_AFFINITY_SCORER = "lora-affinity-scorer"


class LoraAffinityScorer:
    def __init__(self, name: str = LORA_AFFINITY_SCORER) -> None:
        self.typed_name = TypedName(LORA_AFFINITY_SCORER, name)

    def score(self, cycle: CycleState, request: LLMRequest, endpoints: list[EndpointState]) -> list[float]:
        target = request.target_model
        out = []
        for e in endpoints:
            m = e.metrics
            if e.stale or m is None or m.max_lora is None:
                out.append(NEUTRAL)
            elif target in m.active_loras:
                out.append(1.0)
            elif len(m.active_loras) + len(m.waiting_loras) < m.max_lora:
                out.append(0.8)
            elif target in m.waiting_loras:
                out.append(0.6)
            else:
                out.append(0.0)
        return out


def factory(name: str, params: Mapping[str, Any], handle: PluginHandle) -> LoraAffinityScorer:
    decode_params(NoParams, params)
    return LoraAffinityScorer(name)
