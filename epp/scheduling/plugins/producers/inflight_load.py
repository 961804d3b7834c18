"""``inflight-load-producer`` (llm-d): requests and prompt tokens in flight per endpoint, as llm-d counts them.

Unlike the datastore's own counters (whole prompt, held until the response ends), this ledger follows
llm-d's in-flight-load producer:

* only the **uncached** part of the prompt is charged: estimated prompt tokens minus the blocks the
  prefix producer says the endpoint holds (``prefixMatchInfoProducerName``, else the configured prefix
  producer, else no discount);
* a streamed request's prompt tokens are released at its first response bytes (prefill is over), a
  non-streamed one's when it ends; the request itself is released when it ends — failures included,
  because the director reports every end;
* with ``addEstimatedOutputTokens`` an output estimate is charged until the end. epp has no output-length
  classifier, so every request is llm-d's ``UNKNOWN`` bucket (1,000 tokens), capped by the request's
  ``max_tokens`` and ``maxEstimatedOutputTokens``; that is said once at start.

``current_request_tokens`` is llm-d's ``CurrentRequestLoad``: what this request would add to each
candidate, read by ``token-load-scorer``.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from epp.datastore import Endpoint, EndpointState
from epp.request import LLMRequest
from epp.plugin.typed_name import Plugin, TypedName
from epp.scheduling.framework import CycleState, SchedulingResult
from epp.plugin.params import ParamError, decode_params
from epp.scheduling.prefix.producer import ApproxPrefixCacheProducer
from epp.plugin.registry import PluginHandle

log = logging.getLogger(__name__)

INFLIGHT_LOAD_PRODUCER = "inflight-load-producer"
UNKNOWN_BUCKET_OUTPUT_TOKENS = 1000


@dataclass(frozen=True, slots=True)
class InFlightLoadParams:
    add_estimated_output_tokens: bool = False
    max_estimated_output_tokens: int | None = None
    prefix_match_info_producer_name: str | None = None

    def __post_init__(self) -> None:
        if self.max_estimated_output_tokens is not None and self.max_estimated_output_tokens < 0:
            raise ParamError("maxEstimatedOutputTokens", "must not be negative")


@dataclass(slots=True)
class InFlightLoad:
    requests: int = 0
    tokens: int = 0


@dataclass(slots=True)
class _Ticket:
    endpoint: str
    prompt_tokens: int
    output_tokens: int


class InFlightLoadProducer:
    def __init__(
        self, name: str = INFLIGHT_LOAD_PRODUCER, params: InFlightLoadParams | None = None,
        plugins: Mapping[str, Plugin] | None = None,
    ) -> None:
        self.typed_name = TypedName(INFLIGHT_LOAD_PRODUCER, name)
        self.params = params or InFlightLoadParams()
        self._plugins = plugins if plugins is not None else {}  # the config's plugins, filled as they are built
        self._prefix: ApproxPrefixCacheProducer | None | bool = False  # False: not looked up yet
        self._loads: dict[str, InFlightLoad] = {}
        self._open: dict[str, _Ticket] = {}
        if self.params.add_estimated_output_tokens:
            log.info("%s: no output-length classifier in epp; every request is estimated at the UNKNOWN bucket "
                     "(%d output tokens, capped by max_tokens)", name, UNKNOWN_BUCKET_OUTPUT_TOKENS)

    # -- reads ------------------------------------------------------------------------------
    def load(self, endpoint: str) -> InFlightLoad:
        return self._loads.get(endpoint) or InFlightLoad()

    def prefix_producer(self) -> ApproxPrefixCacheProducer | None:
        """Resolved on first use: producers are built in config order, the prefix one may come later."""
        if self._prefix is False:
            wanted = self.params.prefix_match_info_producer_name
            found = [p for n, p in self._plugins.items() if isinstance(p, ApproxPrefixCacheProducer)
                     and (wanted is None or n == wanted)]
            if wanted is not None and not found:
                log.warning("%s: no prefix producer named %r; in-flight tokens get no cache discount",
                            self.typed_name.name, wanted)
            self._prefix = found[0] if found else None
        return self._prefix if isinstance(self._prefix, ApproxPrefixCacheProducer) else None

    def current_request_tokens(self, cycle: CycleState, request: LLMRequest, endpoints: list[EndpointState]) -> list[int]:
        """Uncached prompt tokens (plus the output estimate) ``request`` would add to each endpoint."""
        prompt = request.estimated_prompt_tokens
        extra = self._output_estimate(request)
        producer = self.prefix_producer()
        if producer is None:
            return [prompt + extra] * len(endpoints)
        info, hits = producer.match(cycle, request, endpoints)
        block = info.block_tokens
        return [max(0, prompt - h * block) + extra for h in hits]

    def _output_estimate(self, request: LLMRequest) -> int:
        if not self.params.add_estimated_output_tokens:
            return 0
        estimate = UNKNOWN_BUCKET_OUTPUT_TOKENS
        for cap in (request.max_tokens, self.params.max_estimated_output_tokens):
            if cap is not None:
                estimate = min(estimate, cap)
        return max(0, estimate)

    # -- request lifecycle -------------------------------------------------------------------
    def pre_request(self, cycle: CycleState, request: LLMRequest, result: SchedulingResult) -> None:
        chosen = result.endpoints
        if not chosen:
            return
        target = chosen[0]
        total = self.current_request_tokens(cycle, request, [target])[0]
        output = self._output_estimate(request)
        ticket = _Ticket(target.name, total - output, output)
        self._release(request.request_id)  # a retried request id must not count twice
        self._open[request.request_id] = ticket
        load = self._loads.setdefault(target.name, InFlightLoad())
        load.requests += 1
        load.tokens += total

    def response_started(self, request: LLMRequest, endpoint: EndpointState) -> None:
        ticket = self._open.get(request.request_id)
        if ticket is not None and request.stream:
            self._take(ticket.endpoint, 0, ticket.prompt_tokens)
            ticket.prompt_tokens = 0

    def response_complete(self, request: LLMRequest, endpoint: EndpointState, usage: Mapping[str, int]) -> None:
        self._release(request.request_id)

    def _release(self, request_id: str) -> None:
        ticket = self._open.pop(request_id, None)
        if ticket is not None:
            self._take(ticket.endpoint, 1, ticket.prompt_tokens + ticket.output_tokens)

    def _take(self, endpoint: str, requests: int, tokens: int) -> None:
        load = self._loads.get(endpoint)
        if load is not None:
            load.requests = max(0, load.requests - requests)
            load.tokens = max(0, load.tokens - tokens)

    # -- membership ---------------------------------------------------------------------------
    def endpoint_added(self, endpoint: Endpoint) -> None:
        return None

    def endpoint_removed(self, endpoint: Endpoint) -> None:
        self._loads.pop(endpoint.name, None)
        for rid in [rid for rid, t in self._open.items() if t.endpoint == endpoint.name]:
            del self._open[rid]


def find_inflight_load(handle: PluginHandle, wanted: str | None, key: str) -> InFlightLoadProducer | None:
    """The producer a consumer reads: the one named ``wanted`` (``ParamError`` under ``key`` if there is
    none), else the configured one, else None (the consumer falls back to the datastore's counters)."""
    if wanted is not None:
        found = handle.plugins.get(wanted)
        if not isinstance(found, InFlightLoadProducer):
            raise ParamError(key, f"no {INFLIGHT_LOAD_PRODUCER} plugin named {wanted!r}")
        return found
    found = handle.by_type(INFLIGHT_LOAD_PRODUCER)
    return found if isinstance(found, InFlightLoadProducer) else None


def inflight_tokens(producer: InFlightLoadProducer | None, endpoints: Sequence[EndpointState]) -> list[int]:
    """Per endpoint, in-flight tokens from the producer when configured, else epp's own counter."""
    if producer is None:
        return [e.inflight_tokens for e in endpoints]
    return [producer.load(e.name).tokens for e in endpoints]


def factory(name: str, params: Mapping[str, Any], handle: PluginHandle) -> InFlightLoadProducer:
    return InFlightLoadProducer(name, decode_params(InFlightLoadParams, params), handle.plugins)
