"""``token-load-scorer``: prefer endpoints with fewer prompt tokens in flight from this epp.

Score = 1 − min(1, t / queueThreshold) with t the endpoint's in-flight tokens (epp's own counter) and
queueThreshold 4,194,304 (128 requests × 32K tokens) by default, as GIE. Not metric-based: staleness
does not apply.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from epp.datastore import EndpointState
from epp.request import LLMRequest
from epp.scheduling.framework import CycleState, TypedName
from epp.scheduling.params import ParamError, decode_params
from epp.scheduling.registry import PluginHandle

TOKEN_LOAD_SCORER = "token-load-scorer"


@dataclass(frozen=True, slots=True)
class TokenLoadParams:
    queue_threshold: int = 4_194_304

    def __post_init__(self) -> None:
        if self.queue_threshold < 1:
            raise ParamError("queueThreshold", "must be at least 1")


class TokenLoadScorer:
    def __init__(self, name: str = TOKEN_LOAD_SCORER, queue_threshold: int = 4_194_304) -> None:
        self.typed_name = TypedName(TOKEN_LOAD_SCORER, name)
        self.queue_threshold = queue_threshold

    def score(self, cycle: CycleState, request: LLMRequest, endpoints: list[EndpointState]) -> list[float]:
        limit = self.queue_threshold
        return [1.0 - min(e.inflight_tokens, limit) / limit for e in endpoints]


def factory(name: str, params: Mapping[str, Any], handle: PluginHandle) -> TokenLoadScorer:
    return TokenLoadScorer(name, decode_params(TokenLoadParams, params).queue_threshold)
