"""``load-aware-scorer`` (llm-d): an empty queue is good, a queue at ``threshold`` is as bad as it gets.

Score = 0.5 when the waiting queue q is 0, else 0.5 · (1 − min(q, threshold) / threshold); the upper
half of the range is left for capacity signals the engines do not report yet, as in llm-d. Stale or
missing metrics → 0.5 (the same as an idle endpoint: this scorer cannot tell them apart anyway).
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
from epp.scheduling.plugins.scorers._common import NEUTRAL
from epp.plugin.registry import PluginHandle

LOAD_AWARE_SCORER = "load-aware-scorer"


@dataclass(frozen=True, slots=True)
class LoadAwareParams:
    threshold: int = 128

    def __post_init__(self) -> None:
        if self.threshold < 1:
            raise ParamError("threshold", "must be at least 1")


class LoadAwareScorer:
    def __init__(self, name: str = LOAD_AWARE_SCORER, threshold: int = 128) -> None:
        self.typed_name = TypedName(LOAD_AWARE_SCORER, name)
        self.threshold = threshold

    def score(self, cycle: CycleState, request: LLMRequest, endpoints: list[EndpointState]) -> list[float]:
        limit = self.threshold
        out = []
        for e in endpoints:
            m = e.metrics
            if e.stale or m is None:
                out.append(NEUTRAL)
            else:
                out.append(0.5 if m.waiting <= 0 else 0.5 * (1.0 - min(m.waiting, limit) / limit))
        return out


def factory(name: str, params: Mapping[str, Any], handle: PluginHandle) -> LoadAwareScorer:
    return LoadAwareScorer(name, decode_params(LoadAwareParams, params).threshold)
