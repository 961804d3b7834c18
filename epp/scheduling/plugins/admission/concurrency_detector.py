"""``concurrency-detector`` (llm-d ``flowcontrol/saturationdetector/concurrency``): saturation from work
in flight, not from scraped gauges, so it reacts to a burst before the next scrape.

* Pool saturation (what admission and flow control ask) = Σ in-flight / Σ capacity over the candidates,
  capacity ``maxConcurrency`` requests (``concurrencyMode: requests``, default) or
  ``maxTokenConcurrency`` tokens (``tokens``) per endpoint; ``hybrid`` takes the larger ratio. No
  endpoints → 1.0. Saturated at ≥ 1.0.
* As a filter it drops endpoints at or above capacity × (1 + ``headroom``) (requests, tokens, or either
  in hybrid), letting the scheduler burst past the ideal target by the headroom. It does not fall back:
  an empty result is an empty result, as upstream.

In-flight counts come from the ``inflight-load-producer`` when one is configured (uncached tokens), else
from epp's own per-endpoint counters.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from epp.datastore import EndpointState
from epp.request import LLMRequest
from epp.plugin.typed_name import TypedName
from epp.scheduling.framework import CycleState
from epp.plugin.params import ParamError, decode_params
from epp.scheduling.plugins.producers.inflight_load import InFlightLoadProducer, find_inflight_load
from epp.plugin.registry import PluginHandle

log = logging.getLogger(__name__)

CONCURRENCY_DETECTOR = "concurrency-detector"
MODES = ("requests", "tokens", "hybrid")


@dataclass(frozen=True, slots=True)
class ConcurrencyParams:
    concurrency_mode: str = "requests"
    max_concurrency: int = 100
    max_token_concurrency: int = 1_000_000
    headroom: float = 0.0

    def __post_init__(self) -> None:
        if self.concurrency_mode not in MODES:
            raise ParamError("concurrencyMode", f"must be one of {', '.join(MODES)}")
        if self.max_concurrency <= 0:
            raise ParamError("maxConcurrency", "must be > 0")
        if self.max_token_concurrency <= 0:
            raise ParamError("maxTokenConcurrency", "must be > 0")
        if self.headroom < 0:
            raise ParamError("headroom", "must be >= 0")


class ConcurrencyDetector:
    def __init__(self, name: str = CONCURRENCY_DETECTOR, params: ConcurrencyParams | None = None,
                 load: InFlightLoadProducer | None = None) -> None:
        self.typed_name = TypedName(CONCURRENCY_DETECTOR, name)
        self.params = params or ConcurrencyParams()
        self.load = load
        self._requests = self.params.concurrency_mode in ("requests", "hybrid")
        self._tokens = self.params.concurrency_mode in ("tokens", "hybrid")

    def _in_flight(self, e: EndpointState) -> tuple[int, int]:
        if self.load is None:
            return e.inflight_requests, e.inflight_tokens
        load = self.load.load(e.name)
        return load.requests, load.tokens

    def saturation(self, endpoints: Sequence[EndpointState]) -> float:
        if not endpoints:
            return 1.0
        p = self.params
        loads = [self._in_flight(e) for e in endpoints]
        ratios = []
        if self._requests:
            ratios.append(sum(r for r, _ in loads) / (p.max_concurrency * len(endpoints)))
        if self._tokens:
            ratios.append(sum(t for _, t in loads) / (p.max_token_concurrency * len(endpoints)))
        return max(ratios)

    def is_saturated(self, endpoints: Sequence[EndpointState]) -> bool:
        return self.saturation(endpoints) >= 1.0

    def filter(self, cycle: CycleState, request: LLMRequest, endpoints: list[EndpointState]) -> list[EndpointState]:
        p = self.params
        request_limit = int(p.max_concurrency * (1.0 + p.headroom))
        token_limit = int(p.max_token_concurrency * (1.0 + p.headroom))
        kept = []
        for e in endpoints:
            requests, tokens = self._in_flight(e)
            if (not self._requests or requests < request_limit) and (not self._tokens or tokens < token_limit):
                kept.append(e)
        return kept


def factory(name: str, params: Mapping[str, Any], handle: PluginHandle) -> ConcurrencyDetector:
    p = decode_params(ConcurrencyParams, params)
    if p.headroom > 1.0:
        log.warning("%s: headroom %g allows %.0f%% burst; it is a fraction, not a percentage", name, p.headroom, p.headroom * 100)
    return ConcurrencyDetector(name, p, find_inflight_load(handle, None, "inFlightLoadProducerName"))
