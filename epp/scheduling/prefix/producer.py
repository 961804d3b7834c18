"""``approx-prefix-cache-producer``: per request, how much of its prompt each endpoint likely caches.

It hashes the prompt once per scheduling cycle (``prompt_block_hashes``), looks the hashes up in its
``PrefixIndex`` for the endpoints asked about, and — once the pick is final (PreRequest) — records
the prompt for the chosen endpoint and for the ``prefill`` profile's pick, if any, as GIE does.
Removed endpoints are purged through the datastore-listener methods.

Telemetry hooks (GIE's ``prefix_indexer_*`` metrics): observers added with ``add_match_observer`` hear at PreRequest
how many leading blocks the chosen endpoint already held out of the prompt's hashed blocks, before the
prompt is recorded; ``entries()`` is the index size.

Parameters (GIE names): ``blockSizeTokens`` 16, ``maxPrefixBlocksToMatch`` 256 (or llm-d's
``maxPrefixTokensToMatch``, divided by the block size), ``lruCapacityPerServer`` 31250, ``autoTune``
true (block size taken from the first candidate's reported ``block_size``). The deprecated
character-based ``blockSize`` alone becomes ``blockSize / 4`` tokens (GIE's averageCharactersPerToken)
with one warning, so GIE v1.x configs keep loading where GIE itself now refuses them; beside
``blockSizeTokens`` it is ignored, as in GIE. Unlike GIE, autoTune does not resize the
per-endpoint capacity from ``num_gpu_blocks``: the index is one table sized up front.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from epp._util.hashing import ChainMemo
from epp._util.offload import INLINE, Offload, Split
from epp.datastore import Endpoint, EndpointState
from epp.request import LLMRequest
from epp.scheduling.bookings import Bookings
from epp.plugin.typed_name import TypedName
from epp.scheduling.framework import CycleState, SchedulingResult
from epp.plugin.params import ParamError, decode_params
from epp.scheduling.prefix.hashing import prompt_block_hashes
from epp.scheduling.prefix.index import BlockIndex
from epp.scheduling.prefix.protocol import PrefixIndex
from epp.plugin.registry import PluginHandle

log = logging.getLogger("epp.scheduling.prefix")

APPROX_PREFIX_CACHE_PRODUCER = "approx-prefix-cache-producer"
PREFILL_PROFILE = "prefill"

PrefixMatchObserver = Callable[[int, int, int], None]
"""(matched blocks on the chosen endpoint, prompt blocks hashed, tokens per block)."""


DEFAULT_BLOCK_SIZE_TOKENS = 16
TAIL_LIMIT = 4096  # lazily hashed prompts awaiting their first response; older ones are never learned in full
CHARACTERS_PER_TOKEN = 4  # GIE's averageCharactersPerToken


@dataclass(frozen=True, slots=True)
class PrefixIndexParams:
    auto_tune: bool = True
    block_size_tokens: int = None  # type: ignore[assignment]  # resolved in __post_init__ (blockSize or the default)
    block_size: int | None = None
    max_prefix_blocks_to_match: int = 256
    max_prefix_tokens_to_match: int | None = None
    lru_capacity_per_server: int = 31250

    def __post_init__(self) -> None:
        if self.block_size is not None and self.block_size < 1:
            raise ParamError("blockSize", "must be at least 1")
        if self.block_size_tokens is None:
            tokens = DEFAULT_BLOCK_SIZE_TOKENS
            if self.block_size is not None:
                tokens = max(1, self.block_size // CHARACTERS_PER_TOKEN)
                log.warning("prefix cache: blockSize (%d characters) is deprecated; using blockSizeTokens %d "
                            "(%d characters per token); set blockSizeTokens instead", self.block_size, tokens,
                            CHARACTERS_PER_TOKEN)
            object.__setattr__(self, "block_size_tokens", tokens)
        elif self.block_size is not None:
            log.warning("prefix cache: deprecated blockSize ignored; blockSizeTokens %d is used", self.block_size_tokens)
        for key, value in (
            ("blockSizeTokens", self.block_size_tokens),
            ("maxPrefixBlocksToMatch", self.max_prefix_blocks_to_match),
            ("lruCapacityPerServer", self.lru_capacity_per_server),
        ):
            if value < 1:
                raise ParamError(key, "must be at least 1")
        if self.max_prefix_tokens_to_match is not None and self.max_prefix_tokens_to_match < 1:
            raise ParamError("maxPrefixTokensToMatch", "must be at least 1")


class HashTail(Protocol):
    """The rest of a prompt's block hashes, computed on demand (``tokens.BlockHashTail``)."""

    @property
    def done(self) -> bool: ...

    def next(self, blocks: int) -> list[int]:
        """At least ``blocks`` more hashes (fewer only at the prompt's end)."""
        ...

    def estimated_blocks(self) -> int: ...

    def rest(self) -> Split[list[int]]:
        """All the hashes still to come, cut where the encoding may leave the event loop."""
        ...


@dataclass(slots=True)
class PrefixMatch:
    """One request's block hashes and, per endpoint name, how many leading blocks it holds.

    With a ``tail`` (the precise producer, a tokenizer that streams), ``hashes`` are the prompt's
    first blocks only: lookups grow them while some endpoint holds all of them (``grow``), so the
    matches are exact and a prompt is tokenized only as far as some endpoint holds it; the rest is
    computed when the request's first response arrives (``finish``)."""

    hashes: list[int]
    block_tokens: int
    kind: str | None = None  # precise producer: the prompt kind whose engine keys these are (None: byte hashes)
    hits: dict[str, int] = field(default_factory=dict)
    aligned: tuple[list[EndpointState], list[int]] | None = None  # last endpoint list asked about
    tail: HashTail | None = None

    @property
    def total(self) -> int:
        """The prompt's blocks (those still in the tail estimated from its text)."""
        return len(self.hashes) + (self.tail.estimated_blocks() if self.tail is not None else 0)

    def grow(self, blocks: int) -> bool:
        """At least ``blocks`` more hashes from the tail; False when it had none left."""
        tail = self.tail
        if tail is None:
            return False
        more = tail.next(blocks)
        if tail.done:
            self.tail = None
        if more:
            self.hashes = self.hashes + more  # a new list: an index may remember the last list it looked up
        return bool(more)

    def finish(self) -> list[int]:
        """All the hashes still in the tail (now appended to ``hashes``)."""
        return self.rest().run()

    def rest(self) -> Split[list[int]]:
        """``finish`` cut where the tokenizer's encoding may run on another thread (``HashTail.rest``):
        the hashes are appended in the finishing step."""
        tail = self.tail
        if tail is None:
            return Split.ready([])

        def appended(more: list[int]) -> list[int]:
            self.tail = None
            if more:
                self.hashes = self.hashes + more
            return more

        return tail.rest().then(appended)


@dataclass(slots=True)
class _Rest:
    """A prompt's rest being encoded off the pick (``learn_tail``) and what the request did meanwhile."""

    names: list[str]
    booking: bool = True  # still in flight: its new blocks are booked for ``response_failed``
    failed: bool = False  # it failed before its rest was hashed: nothing is learned


class ApproxPrefixCacheProducer:
    def __init__(
        self, name: str = APPROX_PREFIX_CACHE_PRODUCER, params: PrefixIndexParams | None = None,
        index: PrefixIndex | None = None,
    ) -> None:
        self.typed_name = TypedName(APPROX_PREFIX_CACHE_PRODUCER, name)
        self.params = params or PrefixIndexParams()
        self.index: PrefixIndex = index or BlockIndex(self.params.lru_capacity_per_server)
        self._key = f"prefix-match/{name}"
        self.chains = ChainMemo()
        """Recently hashed prompt segments: a prompt repeating earlier ones is hashed once per segment."""
        self._match_observers: list[PrefixMatchObserver] = []
        self.added: Bookings[list[tuple[str, list[int]]]] = Bookings()
        """Per request in flight, the blocks ``pre_request`` added that each endpoint did not hold: a
        failed request cached nothing, so they are discarded again."""
        self.tail_learned: list[Callable[[str, list[str], list[int]], None]] = []
        """Told (request id, endpoints, the prompt's hashes) when ``learn_tail`` completed a prompt."""
        self.tails: Bookings[tuple[PrefixMatch, list[str]]] = Bookings(TAIL_LIMIT)
        """Per request in flight whose prompt was hashed lazily, its match and the endpoints to learn
        the rest for (``learn_tail``); each holds its prompt's text until then."""
        self._offload: Offload = INLINE
        self._rests: dict[str, _Rest] = {}
        """Per request whose rest is being encoded (``learn_tail``), what its end asked meanwhile."""

    def _block_tokens(self, endpoints: list[EndpointState]) -> int:
        if self.params.auto_tune and endpoints:
            m = endpoints[0].metrics
            if m is not None and m.block_size:
                return m.block_size
        return self.params.block_size_tokens

    def _hashes(self, request: LLMRequest, endpoints: list[EndpointState]) -> PrefixMatch:
        block = self._block_tokens(endpoints)
        limit = self.params.max_prefix_blocks_to_match
        if self.params.max_prefix_tokens_to_match is not None:
            limit = max(1, self.params.max_prefix_tokens_to_match // block)
        hashes, tail = self.prompt_blocks(request, block, limit)
        return PrefixMatch(hashes, block, tail=tail)

    def prompt_blocks(self, request: LLMRequest, block_tokens: int, max_blocks: int) -> tuple[list[int], HashTail | None]:
        """The prompt's index keys known now and the tail computing the rest (None: all are known)."""
        return self.prompt_hashes(request, block_tokens, max_blocks), None

    def prompt_hashes(self, request: LLMRequest, block_tokens: int, max_blocks: int) -> list[int]:
        """The prompt as index keys; the precise producer overrides it to hash engine token blocks."""
        return prompt_block_hashes(request, block_tokens, max_blocks, self.chains)

    def info(self, cycle: CycleState, request: LLMRequest, endpoints: list[EndpointState]) -> PrefixMatch:
        """The cycle's hashes, computed once per request."""
        info: PrefixMatch | None = cycle.get(self._key)
        if info is None:
            info = self._hashes(request, endpoints)
            cycle[self._key] = info
        return info

    def match(self, cycle: CycleState, request: LLMRequest, endpoints: list[EndpointState]) -> tuple[PrefixMatch, list[int]]:
        """The cycle's match info and, aligned with ``endpoints``, each one's leading blocks held.

        Looked up once per endpoint per cycle, however many scorers and profiles ask."""
        info = self.info(cycle, request, endpoints)
        if info.aligned is not None and info.aligned[0] is endpoints:
            return info, info.aligned[1]
        names = [e.endpoint.name for e in endpoints]
        known = info.hits
        missing = [n for n in names if n not in known]
        if missing:
            known.update(zip(missing, self._grown_lookup(info, missing)))
        counts = [known[n] for n in names]
        info.aligned = (endpoints, counts)
        return info, counts

    def lookup(self, info: PrefixMatch, names: list[str]) -> list[int]:
        """The index's match for ``names`` (aligned); the precise producer matches per prompt kind."""
        return self.index.match(info.hashes, names)

    def _grown_lookup(self, info: PrefixMatch, names: list[str]) -> list[int]:
        """``lookup``, growing the hashes while some endpoint holds all of them. Each growth reads what
        the tokenizer's caches hold for free and then new text for 1, 2, 4 … blocks (a window of the
        tokenizer's stream at least), so a prompt is encoded little past where the endpoints' caches end
        and a long one they hold costs a few lookups."""
        step = 1
        if not info.hashes and info.grow(step):  # nothing to look up yet
            step = 2
        counts = self.lookup(info, names)
        while info.tail is not None:
            known = len(info.hashes)
            open_ = [i for i, held in enumerate(counts) if held >= known]
            if not open_ or not info.grow(step):
                break
            step *= 2
            for i, held in zip(open_, self.lookup(info, [names[i] for i in open_])):
                counts[i] = held
        return counts

    def add_match_observer(self, observer: PrefixMatchObserver) -> None:
        """Tell ``observer`` at every PreRequest how much of the prompt the chosen endpoint already held."""
        self._match_observers.append(observer)

    def view_is_exact(self, endpoint_name: str) -> bool:
        """Whether this endpoint's matches are what its engine caches now (False: what it was sent, some
        of which it may have evicted since)."""
        return False

    def pre_request(self, cycle: CycleState, request: LLMRequest, result: SchedulingResult) -> None:
        chosen = result.endpoints
        if not chosen:
            return
        info = self.info(cycle, request, chosen)
        hashes = info.hashes
        prefill = prefill_target(result)
        targets = [chosen[0]] if prefill is None else [chosen[0], prefill]
        _, matched = self.match(cycle, request, targets)  # the cycle's lookup when scorers made it
        for observe in self._match_observers:
            observe(matched[0], info.total, info.block_tokens)
        booked = [(t.name, hashes[held:]) for t, held in zip(targets, matched) if held < len(hashes)]
        if booked:
            self.added.put(request.request_id, booked)
        for target in targets:
            self.index.add(target.name, hashes)
        if info.tail is not None:
            self.tails.put(request.request_id, (info, [t.name for t in targets]))

    def offload_to(self, offload: Offload) -> None:
        """Encode the rest of lazily read prompts with ``offload`` (the data layer's worker thread while
        serving; ``INLINE``, at once, otherwise)."""
        self._offload = offload

    def learn_tail(self, request_id: str) -> None:
        """The rest of a prompt hashed lazily at the pick (``PrefixMatch``): its engines now hold it
        (its prefill is over), so the index learns it, off the pick path, and a failure forgets it too.
        Called at the first response by producers that read lazily, else at completion.

        The encoding goes to the offload (``offload_to``); its result is applied on the owner's thread
        as if the request were still where it was at this call, except that a request failed meanwhile
        learns nothing and one completed meanwhile books nothing. An offload that refuses the job (full)
        leaves the rest unlearned, as when the tail was dropped (``TAIL_LIMIT``)."""
        pending = self.tails.pop(request_id)
        if pending is None:
            return
        info, names = pending
        rest = self._rests[request_id] = _Rest(names)
        job = info.rest().then(lambda new: self._learned(request_id, rest, info.hashes, new))
        if not self._offload.submit(job, lambda: self._settled(request_id, rest)):
            self._settled(request_id, rest)

    def _settled(self, request_id: str, rest: _Rest) -> None:
        if self._rests.get(request_id) is rest:
            del self._rests[request_id]

    def _learned(self, request_id: str, rest: _Rest, hashes: list[int], new: list[int]) -> None:
        self._settled(request_id, rest)
        if not new or rest.failed:
            return
        names = rest.names
        if rest.booking:
            booked = dict(self.added.pop(request_id) or ())
            self.added.put(request_id, [(name, booked.get(name, []) + new) for name in names])
        for name in names:
            self.index.add(name, hashes)
        for listener in self.tail_learned:
            listener(request_id, names, hashes)

    def response_complete(self, request: LLMRequest, endpoint: EndpointState, usage: Mapping[str, int]) -> None:
        self.learn_tail(request.request_id)  # a response that never said it started
        self.added.pop(request.request_id)
        rest = self._rests.get(request.request_id)
        if rest is not None:
            rest.booking = False

    def response_failed(self, request: LLMRequest, endpoint: EndpointState, reason: str) -> None:
        """The blocks this request was the first to send each endpoint are not cached there."""
        self.tails.pop(request.request_id)
        rest = self._rests.pop(request.request_id, None)
        if rest is not None:
            rest.failed = True
        for name, hashes in self.added.pop(request.request_id) or ():
            self.index.discard(name, hashes)

    def entries(self) -> int:
        return self.index.entries()

    def endpoint_added(self, endpoint: Endpoint) -> None:
        self.index.endpoint_added(endpoint)

    def endpoint_removed(self, endpoint: Endpoint) -> None:
        self.index.endpoint_removed(endpoint)


def prefill_target(result: SchedulingResult) -> EndpointState | None:
    """The prefill endpoint of a disaggregated pick (it computes the prompt's KV too), else None."""
    prefill = result.profile_results.get(PREFILL_PROFILE)
    if prefill is not None and prefill.endpoints and result.primary_profile != PREFILL_PROFILE:
        return prefill.endpoints[0]
    return None


def factory(name: str, params: Mapping[str, Any], handle: PluginHandle) -> ApproxPrefixCacheProducer:
    return ApproxPrefixCacheProducer(name, decode_params(PrefixIndexParams, params))
