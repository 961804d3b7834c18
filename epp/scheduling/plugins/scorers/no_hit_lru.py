"""``no-hit-lru-scorer`` (llm-d): spread prompts nobody has cached over the least recently used endpoints.

A request is cold when no candidate holds any of its leading blocks (per the prefix producer; no
producer configured → every request is cold). For a cold request the candidates are ranked by when
they last received a cold request — never first (in candidate order), then oldest — and scored
1 − rank/(n − 1), so the first gets 1 and the last 0 (a lone candidate gets 1). A warm request scores
0.5 everywhere, leaving the choice to the other scorers. Once a cold request's pick is final the
chosen endpoint (and the ``prefill`` profile's pick) becomes the most recently used — unless the request
fails (nothing was cached there): then it goes back to never used, or to least recently used if it had
been used before. ``lruSize`` (1024) bounds the endpoints remembered. ``prefixMatchInfoProducerName``
names the prefix producer whose match decides coldness (llm-d: e.g. a ``precise-prefix-cache-producer``);
without it the configured ``approx-prefix-cache-producer`` is read. Not metric-based: staleness does not
apply.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from epp.datastore import Endpoint, EndpointState
from epp.request import LLMRequest
from epp.scheduling.bookings import Bookings
from epp.plugin.typed_name import TypedName
from epp.scheduling.framework import CycleState, SchedulingResult
from epp.plugin.params import ParamError, decode_params
from epp.scheduling.plugins.scorers._common import NEUTRAL
from epp.scheduling.prefix.producer import APPROX_PREFIX_CACHE_PRODUCER, PREFILL_PROFILE, ApproxPrefixCacheProducer
from epp.plugin.registry import PluginHandle

NO_HIT_LRU_SCORER = "no-hit-lru-scorer"


@dataclass(frozen=True, slots=True)
class NoHitLRUParams:
    lru_size: int = 1024
    prefix_plugin_type: str | None = None  # accepted for llm-d config compatibility; unused there too
    prefix_plugin_name: str | None = None  # likewise
    prefix_match_info_producer_name: str | None = None

    def __post_init__(self) -> None:
        if self.lru_size < 1:
            raise ParamError("lruSize", "must be at least 1")


class NoHitLRUScorer:
    def __init__(
        self, handle: PluginHandle, name: str = NO_HIT_LRU_SCORER, lru_size: int = 1024,
        producer: ApproxPrefixCacheProducer | None = None,
    ) -> None:
        self.typed_name = TypedName(NO_HIT_LRU_SCORER, name)
        self._handle = handle
        self._named_producer = producer
        self._lru_size = lru_size
        self._used: OrderedDict[str, None] = OrderedDict()  # least recently used first
        self._cold_key = f"cold/{name}"
        self._touched: Bookings[list[tuple[str, bool]]] = Bookings()
        """Per cold request in flight: the endpoints it made most recent, and whether each was used before."""

    def _producer(self) -> ApproxPrefixCacheProducer | None:
        if self._named_producer is not None:
            return self._named_producer
        # Resolved at use, not at build: the scorer that creates the producer may come later in the config.
        found = self._handle.by_type(APPROX_PREFIX_CACHE_PRODUCER)
        return found if isinstance(found, ApproxPrefixCacheProducer) else None

    def score(self, cycle: CycleState, request: LLMRequest, endpoints: list[EndpointState]) -> list[float]:
        producer = self._producer()
        if producer is not None:
            cold = not any(producer.match(cycle, request, endpoints)[1])
        else:
            cold = True
        cycle[self._cold_key] = cold
        n = len(endpoints)
        if not cold:
            return [NEUTRAL] * n
        if n == 1:
            return [1.0]
        used = self._used
        never = [i for i, e in enumerate(endpoints) if e.name not in used]
        position = {name: i for i, name in enumerate(used)}
        seen = sorted((i for i, e in enumerate(endpoints) if e.name in used), key=lambda i: position[endpoints[i].name])
        scores = [0.0] * n
        for rank, i in enumerate(never + seen):
            scores[i] = 1.0 - rank / (n - 1)
        return scores

    def pre_request(self, cycle: CycleState, request: LLMRequest, result: SchedulingResult) -> None:
        if not cycle.get(self._cold_key) or not result.endpoints:
            return
        names = [result.endpoints[0].name]
        prefill = result.profile_results.get(PREFILL_PROFILE)
        if prefill is not None and prefill.endpoints and result.primary_profile != PREFILL_PROFILE:
            names.append(prefill.endpoints[0].name)
        self._touched.put(request.request_id, [(name, self._touch(name)) for name in names])

    def response_complete(self, request: LLMRequest, endpoint: EndpointState, usage: Mapping[str, int]) -> None:
        self._touched.pop(request.request_id)

    def response_failed(self, request: LLMRequest, endpoint: EndpointState, reason: str) -> None:
        for name, was_used in self._touched.pop(request.request_id) or ():
            if name not in self._used:
                continue
            if was_used:
                self._used.move_to_end(name, last=False)
            else:
                del self._used[name]

    def _touch(self, name: str) -> bool:
        """Make ``name`` the most recently used; whether it had been used before."""
        was_used = self._used.pop(name, False) is None
        self._used[name] = None
        if len(self._used) > self._lru_size:
            self._used.popitem(last=False)
        return was_used

    def endpoint_added(self, endpoint: Endpoint) -> None:
        """New endpoints are simply never used yet."""

    def endpoint_removed(self, endpoint: Endpoint) -> None:
        self._used.pop(endpoint.name, None)


def factory(name: str, params: Mapping[str, Any], handle: PluginHandle) -> NoHitLRUScorer:
    p = decode_params(NoHitLRUParams, params)
    producer = None
    if p.prefix_match_info_producer_name is not None:
        # Producers are built before scorers, so a named one must exist by now.
        found = handle.plugins.get(p.prefix_match_info_producer_name)
        if not isinstance(found, ApproxPrefixCacheProducer):
            raise ParamError("prefixMatchInfoProducerName", f"no prefix producer plugin named {p.prefix_match_info_producer_name!r}")
        producer = found
    return NoHitLRUScorer(handle, name, p.lru_size, producer)
