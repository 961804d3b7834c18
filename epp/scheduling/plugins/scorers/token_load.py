"""``token-load-scorer`` (llm-d ``scorer/tokenload``): prefer endpoints with fewer tokens in flight.

Score = 1 − min(1, t / queueThresholdTokens), t = the endpoint's in-flight tokens plus what this request
would add to it (llm-d's ``InFlightLoad`` + ``CurrentRequestLoad``). Both come from the
``inflight-load-producer`` when one is configured (``inFlightLoadProducerName``, else the first of that
type): uncached prompt tokens only, released at the first streamed byte. Without one, t is epp's own
in-flight prompt-token counter, as GIE's scorer reads it. Default threshold 4,194,304 (128 requests ×
32K); a non-positive value falls back to it, as upstream. ``queueThreshold`` is GIE's older name of the
same knob. ``nonTextTokenWeight`` is accepted: epp carries no multimodal token counts, so every token
weighs 1 whatever its value (said once at start when it is not 1). Not metric-based: staleness does
not apply.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from epp.datastore import EndpointState
from epp.request import LLMRequest
from epp.plugin.typed_name import TypedName
from epp.scheduling.framework import CycleState
from epp.plugin.params import ParamError, decode_params
from epp.scheduling.plugins.producers.inflight_load import InFlightLoadProducer, find_inflight_load, inflight_tokens
from epp.plugin.registry import PluginHandle

log = logging.getLogger(__name__)

TOKEN_LOAD_SCORER = "token-load-scorer"
DEFAULT_QUEUE_THRESHOLD_TOKENS = 4_194_304


@dataclass(frozen=True, slots=True)
class TokenLoadParams:
    queue_threshold_tokens: int | None = None
    queue_threshold: int | None = None
    in_flight_load_producer_name: str | None = None
    non_text_token_weight: float = 1.0

    def __post_init__(self) -> None:
        if self.queue_threshold_tokens is not None and self.queue_threshold is not None:
            raise ParamError("queueThreshold", "set only one of queueThresholdTokens and queueThreshold")

    @property
    def threshold(self) -> int:
        value = self.queue_threshold_tokens if self.queue_threshold_tokens is not None else self.queue_threshold
        return value if value is not None and value > 0 else DEFAULT_QUEUE_THRESHOLD_TOKENS


class TokenLoadScorer:
    def __init__(
        self, name: str = TOKEN_LOAD_SCORER, queue_threshold: int = DEFAULT_QUEUE_THRESHOLD_TOKENS,
        producer: InFlightLoadProducer | None = None,
    ) -> None:
        self.typed_name = TypedName(TOKEN_LOAD_SCORER, name)
        self.queue_threshold = queue_threshold
        self.producer = producer

    def score(self, cycle: CycleState, request: LLMRequest, endpoints: list[EndpointState]) -> list[float]:
        limit = self.queue_threshold
        loads = inflight_tokens(self.producer, endpoints)
        if self.producer is not None:
            added = self.producer.current_request_tokens(cycle, request, endpoints)
            loads = [a + b for a, b in zip(loads, added)]
        return [1.0 - min(t, limit) / limit for t in loads]


def factory(name: str, params: Mapping[str, Any], handle: PluginHandle) -> TokenLoadScorer:
    p = decode_params(TokenLoadParams, params)
    if p.non_text_token_weight != 1.0:
        log.info("%s: nonTextTokenWeight %g has no effect: epp counts no multimodal tokens", name, p.non_text_token_weight)
    producer = find_inflight_load(handle, p.in_flight_load_producer_name, "inFlightLoadProducerName")
    return TokenLoadScorer(name, p.threshold, producer)
