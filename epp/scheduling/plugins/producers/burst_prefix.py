"""``burst-prefix-cache-producer`` (llm-d ``dataproducer/burstprefix``): co-locate a burst of requests that
share a prompt (the n samples of an RL rollout step), so the prefix is prefilled once instead of on every
cold replica.

Upstream holds requests for ``windowDurationMs`` and assigns the window's batch jointly. epp's pick is
synchronous (holding requests is flow control's job), so it assigns online within the same window, and
says so once at start: the first request of a group goes where the other scorers send it; later
identical requests within the window follow it, up to ``maxPerReplica`` per replica (-1: unlimited), then
spill to the least-loaded replica (fewest requests in flight) the group has not filled. With
``minColocateBlocks`` > 0, a new prompt sharing at least that many leading blocks with a prompt placed in
the window follows that placement while the replica holds no more than its fair share of the window's
placements. It emits prefix-match info as the prefix producers do — a full match on the assigned
replica, zero elsewhere — for a ``prefix-cache-scorer`` pointed at it
(``prefixMatchInfoProducerName``). A prompt shorter than one block (``blockSizeTokens``, 64) gets no
affinity.
"""

from __future__ import annotations

import logging
import math
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import xxhash

from epp._util.clock import Clock
from epp.datastore import Endpoint, EndpointState
from epp.request import LLMRequest
from epp.scheduling.bookings import Bookings
from epp.plugin.typed_name import TypedName
from epp.scheduling.framework import CycleState, SchedulingResult
from epp.plugin.params import ParamError, decode_params
from epp.scheduling.prefix.producer import ApproxPrefixCacheProducer, PrefixIndexParams, PrefixMatch
from epp.plugin.registry import PluginHandle

log = logging.getLogger(__name__)

BURST_PREFIX_CACHE_PRODUCER = "burst-prefix-cache-producer"
DEFAULT_MAX_BLOCKS = 256


@dataclass(frozen=True, slots=True)
class BurstParams:
    window_duration_ms: int = 100
    max_per_replica: int = -1
    block_size_tokens: int = 64
    max_prefix_tokens_to_match: int = 0
    min_colocate_blocks: int = 0

    def __post_init__(self) -> None:
        if self.window_duration_ms <= 0:
            raise ParamError("windowDurationMs", "must be > 0")
        if self.max_per_replica == 0 or self.max_per_replica < -1:
            raise ParamError("maxPerReplica", "must be -1 (unlimited) or at least 1")
        if self.block_size_tokens < 1:
            raise ParamError("blockSizeTokens", "must be at least 1")
        if self.max_prefix_tokens_to_match < 0 or self.min_colocate_blocks < 0:
            raise ParamError("minColocateBlocks" if self.min_colocate_blocks < 0 else "maxPrefixTokensToMatch", "must not be negative")


@dataclass(frozen=True, slots=True)
class _Placement:
    at: float
    group: int
    hashes: tuple[int, ...]
    endpoint: str


class BurstPrefixCacheProducer(ApproxPrefixCacheProducer):
    def __init__(self, name: str, params: BurstParams, clock: Clock) -> None:
        blocks = params.max_prefix_tokens_to_match // params.block_size_tokens or DEFAULT_MAX_BLOCKS
        super().__init__(name, PrefixIndexParams(auto_tune=False, block_size_tokens=params.block_size_tokens,
                                                 max_prefix_blocks_to_match=blocks, lru_capacity_per_server=1))  # index unused
        self.typed_name = TypedName(BURST_PREFIX_CACHE_PRODUCER, name)
        self.burst = params
        self.clock = clock
        self.window = params.window_duration_ms / 1000.0
        self._placed: deque[_Placement] = deque()
        self._placed_by: Bookings[_Placement] = Bookings()
        """Each request in flight's placement: a failed request's is withdrawn (no sample may follow it
        to an endpoint that did not take it)."""
        self._assigned_key = f"burst-assigned/{name}"
        log.info("%s: epp assigns bursts online within the %d ms window (no hold; holding requests is flow "
                 "control's): a group's first request goes by the other scorers, the rest follow it",
                 name, params.window_duration_ms)

    def match(self, cycle: CycleState, request: LLMRequest, endpoints: list[EndpointState]) -> tuple[PrefixMatch, list[int]]:
        info = self.info(cycle, request, endpoints)
        if self._assigned_key not in cycle:
            cycle[self._assigned_key] = self._assign(request, info.hashes, endpoints)
        assigned = cycle[self._assigned_key]
        return info, [info.total if e.name == assigned else 0 for e in endpoints]

    def _assign(self, request: LLMRequest, hashes: list[int], endpoints: list[EndpointState]) -> str | None:
        if not hashes:
            return None
        self._expire()
        group = _group(request)
        limit = self.burst.max_per_replica
        counts: dict[str, int] = {}
        for p in self._placed:
            if p.group == group:
                counts[p.endpoint] = counts.get(p.endpoint, 0) + 1
        names = {e.name for e in endpoints}
        if counts:
            open_ = [n for n, c in counts.items() if n in names and (limit < 0 or c < limit)]
            if open_:
                return max(open_, key=lambda n: counts[n])  # fill one replica before spilling
            fresh = [e for e in endpoints if e.name not in counts]
            return min(fresh, key=lambda e: e.inflight_requests).name if fresh else None
        return self._colocate(hashes, names, len(endpoints))

    def _colocate(self, hashes: list[int], names: set[str], pool: int) -> str | None:
        need = self.burst.min_colocate_blocks
        if need <= 0 or len(hashes) < need:
            return None
        placed = [p for p in self._placed if p.endpoint in names]
        fair = math.ceil((len(placed) + 1) / max(1, pool))
        per_endpoint: dict[str, int] = {}
        for p in placed:
            per_endpoint[p.endpoint] = per_endpoint.get(p.endpoint, 0) + 1
        best: tuple[int, str] | None = None
        for p in placed:
            shared = _shared_blocks(hashes, p.hashes)
            if shared >= need and per_endpoint[p.endpoint] < fair and (best is None or shared > best[0]):
                best = (shared, p.endpoint)
        return best[1] if best else None

    def _expire(self) -> None:
        horizon = self.clock.now() - self.window
        while self._placed and self._placed[0].at < horizon:
            self._placed.popleft()

    def pre_request(self, cycle: CycleState, request: LLMRequest, result: SchedulingResult) -> None:
        chosen = result.endpoints
        if not chosen:
            return
        hashes = self.info(cycle, request, chosen).hashes
        if hashes:
            placement = _Placement(self.clock.now(), _group(request), tuple(hashes), chosen[0].name)
            self._placed.append(placement)
            self._placed_by.put(request.request_id, placement)

    def response_complete(self, request: LLMRequest, endpoint: EndpointState, usage: Mapping[str, int]) -> None:
        self._placed_by.pop(request.request_id)

    def response_failed(self, request: LLMRequest, endpoint: EndpointState, reason: str) -> None:
        placement = self._placed_by.pop(request.request_id)
        if placement is not None:
            self._placed = deque(p for p in self._placed if p is not placement)

    def entries(self) -> int:
        return len(self._placed)

    def endpoint_added(self, endpoint: Endpoint) -> None:
        return None

    def endpoint_removed(self, endpoint: Endpoint) -> None:
        self._placed = deque(p for p in self._placed if p.endpoint != endpoint.name)


def _group(request: LLMRequest) -> int:
    """Identity of the whole prompt (and model): the samples of one prompt share it."""
    h = xxhash.xxh3_64(request.target_model.encode())
    if request.prompt_token_ids is not None:
        h.update(b"".join(t.to_bytes(4, "little", signed=False) for t in request.prompt_token_ids))
    else:
        h.update(request.prompt_bytes)
    return h.intdigest()


def _shared_blocks(a: list[int], b: tuple[int, ...]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def factory(name: str, params: Mapping[str, Any], handle: PluginHandle) -> BurstPrefixCacheProducer:
    return BurstPrefixCacheProducer(name, decode_params(BurstParams, params), handle.clock)
