"""The precise prefix index: exactly the blocks engines report in their KV-cache events, with a
per-endpoint fallback to an approximate index whenever an endpoint's event feed cannot be trusted.

**Keys.** A block is keyed by the chained hash of its token ids (``chain_hashes(token_blocks(...),
seed)``, seed = the LoRA adapter's name or else the model in the event topic, plus the
``cache_salt``), recomputed from
``BlockStored.token_ids`` and the parent block's key — the way llm-d's indexer maps engine keys to
request keys. The request side hashes its prompt the same way (``tokens.engine_block_hashes``), so
keys agree whatever hash function the engine uses (vLLM's sha256, SGLang's). Engine hashes are kept
only where they differ from the key (an alias map, empty for ``epp sim`` whose hashes are these
keys), to resolve later ``BlockRemoved`` and parent references. A store whose parent is unknown
(events before we subscribed) is keyed by the engine hashes themselves: it matches nothing unless
the engine hashes like epp, never something wrong. The rest of vLLM's per-block ``extra_keys``
(multimodal identifiers, prompt-embedding digests) is hashed into the key (``block_extras``), so
such blocks never match a text prompt with the same placeholder tokens. Only KV-cache groups of
full attention are indexed (``GroupFilter``: hybrid models' sliding-window groups hold suffixes).

**Counting.** A block stored twice (two requests computed it concurrently, or GPU and CPU copies)
is held until both copies are removed. ``match`` counts, per endpoint, its leading blocks: the first
block it lacks ends its count (llm-d's longest-prefix semantics).

**Trust.** An endpoint's view is used only while its feed is ``LIVE``; otherwise that endpoint is
matched in the fallback index (fed by every ``add``, i.e. epp's own picks), so the result is a mixed
view, never a blind spot:

* ``NO_EVENTS`` — nothing received yet; ``DISCONNECTED`` — the subscriber's connection is down;
* ``RESYNCING`` — a sequence gap (events lost: the view may hold evicted blocks and miss stored
  ones), a publisher restart with a gap, or more blocks than ``max_blocks_per_endpoint`` (lost
  removals). Blocks held before the gap are *suspect*: a new store confirms them, a removal drops
  them, and when ``resync_window`` has passed the unconfirmed rest is dropped and the view is
  ``LIVE`` again, holding only what was reported since. ``AllBlocksCleared`` ends it at once;
* ``SILENT`` — epp sent the endpoint work more than ``event_timeout`` ago and no event has arrived
  since. vLLM sends no heartbeats and an idle engine is silent with an exact view, so silence counts
  only while events are due;
* ``UNVERIFIED`` / ``KEYS_MISMATCH`` — events flow, but none has yet shown that the engine's blocks
  and epp's prompt hashes agree (see *Key agreement*);
* ``UNDECODABLE`` — the latest batch could not be decoded (a wire format epp does not know); the
  subscriber warns once per endpoint and counts the rest.

**Joining a running engine.** The first batch a view sees is its *baseline*, whatever its sequence
number: there is nothing to resynchronise yet. But an engine announces a block only when it computes
it, so blocks it cached before the subscription (a hot system prompt, reused without being announced
again) stay unknown. The subscriber backfills from vLLM's replay socket where one is configured (a
backfill reaching the publisher's batch 0 leaves nothing unseen); otherwise a view that began
mid-stream is *young* for ``young_window``, and a young LIVE endpoint matches the better of its
precise view and the fallback's learned one.

**Key agreement.** Keys only agree when epp tokenizes prompts exactly as the engine does (the
producer's ``tokenizer``) and cuts blocks of the engine's size; with a mismatched tokenizer a LIVE
feed would make every endpoint match 0, worse than the approximate index. So a feed is trusted only
once the engine's view holds a block of a prompt epp hashed: a lookup whose first block the engine
reported, or a prompt epp routed there (``routed``) whose first or last full block the engine then
reports stored. Coincidences are impossible (64-bit chained hashes of different token ids), so one
agreement is proof; it holds until the publisher restarts. A routed prompt's probe falls due
``event_timeout`` after its first response bytes (``responded``: its prefill is over, its blocks are
stored); if by then the engine reported other stores but not the probe's, it is a miss, and after
``mismatch_after`` misses without any agreement the feed is ``KEYS_MISMATCH`` (logged once, naming the
``tokenizer`` parameter).

Agreement is tracked **per prompt kind** (``CHAT``: rendered by a chat template; ``COMPLETION``: text
or token ids as sent): a tokenizer can be right for completions and wrong for chat (another template,
a BOS rule), and then only chat requests of that endpoint are matched in the fallback; a kind that
agreed is never zeroed by the other's mismatch. ``feed_state(endpoint)`` without a kind summarises
(``LIVE`` when some kind agrees); ``key_agreement`` gives each kind's state. Probes are inconclusive — never a miss — when the engine stored nothing since
(prefix caching off publishes nothing at all), for prompts shorter than one block (no probe), and for
requests that ended without a response; a prompt the engine already cached before epp subscribed
can miss (only its output blocks are stored), which is why one miss is not enough, and a later
agreement lifts ``KEYS_MISMATCH``.

**Model.** Root blocks are seeded with the topic's model (llm-d's ``kv@<pod>@<model>``); vLLM's default
topic is empty, so then with the model of the latest request epp routed to the endpoint. Events that
arrive before the model is known (a backfill at start-up, traffic from elsewhere) wait, bounded by
``max_blocks_per_endpoint``, and are applied in order once it is: from the first request routed
there, or sooner from the model the engine's metrics name (``seed``, by the producer at lookup).

A publisher restart (sequence going back) means a fresh engine with an empty cache: the view is
cleared. Memory: about 150 bytes per held block (a dict entry per endpoint and a shared owner mask),
bounded by ``max_blocks_per_endpoint`` per endpoint.
"""

from __future__ import annotations

import enum
import logging
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import msgpack

from epp._util.clock import Clock
from epp._util.hashing import chain_hashes, chain_hashes_with_extras, seed_hash, token_blocks
from epp.datastore import Endpoint
from epp.kvevents.decode import Cleared, GroupFilter, KVEvent, Removed, Stored
from epp.scheduling.prefix.protocol import PrefixIndex

log = logging.getLogger(__name__)


class FeedState(enum.Enum):
    LIVE = "live"
    NO_EVENTS = "no-events"
    DISCONNECTED = "disconnected"
    RESYNCING = "resyncing"
    SILENT = "silent"
    UNVERIFIED = "unverified"  # events flow; none has shown yet that the engine's keys agree with epp's
    KEYS_MISMATCH = "keys-mismatch"  # events flow, but never with blocks of prompts epp routed there
    UNDECODABLE = "undecodable"  # the latest batch could not be decoded (an unknown wire format)


CHAT = "chat"
COMPLETION = "completion"
PROMPT_KINDS = (CHAT, COMPLETION)
"""Prompt kinds whose keys agree or not independently (see *Key agreement*)."""


class KeyAgreement(enum.Enum):
    AGREED = "agreed"
    UNVERIFIED = "unverified"
    MISMATCH = "mismatch"


class SeqCheck(enum.Enum):
    """What a batch's sequence number said about the feed."""

    IN_ORDER = "in-order"
    BASELINE = "baseline"  # the first batch seen, from a publisher that had sent others before it
    GAP = "gap"  # events were lost
    RESTART = "restart"  # sequence went back: a new publisher, the view was cleared
    OVERFLOW = "overflow"  # more blocks than allowed: removals were lost, the view was cleared


@dataclass(slots=True)
class _View:
    bit: int
    held: dict[int, int] = field(default_factory=dict)  # key → copies
    suspect: set[int] = field(default_factory=set)  # keys held before a gap, not confirmed since
    alias: dict[int, int] = field(default_factory=dict)  # engine hash → key, where they differ
    last_seq: int | None = None
    awaiting_since: float | None = None
    resync_until: float | None = None
    connected: bool | None = None  # None: unknown (a bound socket cannot tell per endpoint)
    model: str | None = None  # of the latest routed request: seeds root blocks of model-less topics
    agreed: set[str] = field(default_factory=set)  # prompt kinds whose blocks the engine reported: keys agree
    stores: int = 0  # Stored events ingested (probes look at whether any arrived since routing)
    misses: dict[str, int] = field(default_factory=dict)  # per kind: probes due while stores arrived, none theirs
    block_size: int | None = None  # of the latest Stored event (named in the mismatch warning)
    joined_at: float | None = None  # first batch seen was not the publisher's first: blocks may be unseen
    undecodable: bool = False  # the latest batch from this endpoint could not be decoded
    deferred: deque[Stored | Removed] = field(default_factory=deque)  # events waiting for a model to seed them
    deferred_blocks: int = 0
    probe_keys: dict[int, int] = field(default_factory=dict)  # key → probes watching it
    due: deque[_Probe] = field(default_factory=deque)  # probes whose first token came, oldest first
    groups: GroupFilter = field(default_factory=GroupFilter)  # which KV-cache groups hold full attention


@dataclass(slots=True)
class _Probe:
    """A routed prompt's first and last full block keys, watched for in the engine's stores."""

    endpoint: str
    kind: str
    keys: tuple[int, ...]
    stores_at: int  # the view's ``stores`` when routed
    deadline: float = 0.0


def block_extras(event: Stored) -> tuple[str | None, list[bytes | None] | None]:
    """(cache_salt, per-block extra bytes) from a store's ``extra_keys``, as vLLM builds them
    (``kv_cache_utils.generate_block_hash_extra_keys``): each block's keys are the LoRA name, then
    multimodal identifiers, then ``cache_salt`` (first block of a prompt only), then prompt-embedding
    digests. The LoRA name already seeds the chain and the salt seeds it too (as the request side
    does, ``request_seed``; SGLang names it in ``cache_salt``), so only what remains — multimodal and embedding keys, which no text
    request can reproduce — is hashed into the block, serialized with msgpack."""
    if event.extra_keys is None:
        return event.cache_salt, None
    salt: str | None = event.cache_salt
    extras: list[bytes | None] = []
    for i, keys in enumerate(event.extra_keys):
        rest = [k for k in keys or () if k != event.lora_name]
        if i == 0 and event.parent_hash is None and event.cache_salt is None:
            strings = [k for k in rest if isinstance(k, str)]
            if strings:
                salt = strings[-1]
                rest.remove(salt)
        extras.append(msgpack.packb(rest) if rest else None)
    return salt, extras if any(extras) else None


class PreciseIndex:
    """``PrefixIndex`` over engine-reported blocks; see the module docstring."""

    def __init__(
        self,
        clock: Clock,
        fallback: PrefixIndex,
        *,
        event_timeout: float = 5.0,
        resync_window: float = 30.0,
        max_blocks_per_endpoint: int = 1_000_000,
        mismatch_after: int = 8,
        max_probes: int = 4096,
        young_window: float = 300.0,
    ) -> None:
        if event_timeout <= 0 or min(resync_window, young_window) < 0 or min(
            max_blocks_per_endpoint, mismatch_after, max_probes
        ) < 1:
            raise ValueError(
                "event_timeout must be positive, resync_window and young_window not negative, max blocks,"
                " mismatch_after and max_probes at least 1"
            )
        self.young_window = young_window
        self.clock = clock
        self.fallback = fallback
        self.event_timeout = event_timeout
        self.resync_window = resync_window
        self.max_blocks_per_endpoint = max_blocks_per_endpoint
        self.mismatch_after = mismatch_after
        self.max_probes = max_probes
        self._probes: dict[str, _Probe] = {}  # request id → probe waiting for its first token, oldest first
        self.unseeded: set[str] = set()  # endpoints whose events wait for a model (``seed``)
        self._warned: set[str] = set()  # kinds whose mismatch was logged
        self._views: dict[str, _View] = {}
        self._owners: dict[int, int] = {}  # key → bit mask of endpoints holding it
        self._free_bits: list[int] = []
        self._next_bit = 1

    # -- feed ------------------------------------------------------------------------------------
    def ingest(self, endpoint: str, seq: int, events: Iterable[KVEvent], model: str | None) -> SeqCheck:
        """Apply one event batch from ``endpoint``'s publisher (``model`` from its topic, if known)."""
        view = self._view(endpoint)
        now = self.clock.now()
        check = SeqCheck.IN_ORDER
        if view.last_seq is None:
            if seq != 0 or view.undecodable:  # joined a running engine: a baseline, not a gap
                view.joined_at = now
                check = SeqCheck.BASELINE
        else:
            if seq <= view.last_seq:
                self._clear(view)
                view.resync_until = None
                view.joined_at = None
                self._reset_agreement(view)  # a fresh engine: perhaps another model or tokenizer
                check = SeqCheck.RESTART
            if seq != (0 if check is SeqCheck.RESTART else view.last_seq + 1):
                self._start_resync(view, now)
                check = SeqCheck.GAP if check is SeqCheck.IN_ORDER else check
        view.last_seq = seq
        view.undecodable = False
        view.awaiting_since = None
        seeded = model is not None or view.model is not None
        for event in events:
            if not view.groups.keep(event):
                continue
            if seeded or isinstance(event, Cleared):
                self._apply(view, event, model)
            else:
                self._defer(view, event)
                self.unseeded.add(endpoint)
        if len(view.held) + len(view.suspect) > self.max_blocks_per_endpoint:
            self._clear(view)
            self._start_resync(view, now)
            check = SeqCheck.OVERFLOW
        return check

    def _apply(self, view: _View, event: KVEvent, model: str | None) -> None:
        if isinstance(event, Stored):
            self._stored(view, event, model)
        elif isinstance(event, Removed):
            self._removed(view, event.block_hashes)
        else:
            self._clear(view)
            view.resync_until = None

    def _defer(self, view: _View, event: Stored | Removed) -> None:
        """Hold an event until the model that seeds root blocks is known (an empty topic, and no
        request routed to the endpoint yet — e.g. a backfill at start-up); the oldest go first past
        ``max_blocks_per_endpoint`` blocks."""
        view.deferred.append(event)
        view.deferred_blocks += len(event.block_hashes)
        while view.deferred_blocks > self.max_blocks_per_endpoint:
            view.deferred_blocks -= len(view.deferred.popleft().block_hashes)

    def seed(self, endpoint: str, model: str) -> None:
        """``endpoint``'s engine serves ``model`` (from its scraped metrics): key what waited for it."""
        self.unseeded.discard(endpoint)
        view = self._views.get(endpoint)
        if view is not None and view.model is None:
            view.model = model
            self._apply_deferred(view)

    def _apply_deferred(self, view: _View) -> None:
        events, view.deferred = view.deferred, deque()
        view.deferred_blocks = 0
        for event in events:
            self._apply(view, event, None)

    # -- key agreement ---------------------------------------------------------------------------
    def routed(
        self, endpoint: str, request_id: str, hashes: Sequence[int], model: str, kind: str = COMPLETION
    ) -> None:
        """epp sent ``endpoint`` request ``request_id`` (prompt keys ``hashes`` of prompt ``kind``, for
        ``model``), which it will compute there: until that kind's keys are known to agree, watch for
        its blocks."""
        view = self._view(endpoint)
        view.model = model
        if view.deferred:
            self._apply_deferred(view)
        self.unseeded.discard(endpoint)
        if kind in view.agreed or not hashes:
            return
        keys = (hashes[0],) if len(hashes) == 1 else (hashes[0], hashes[-1])
        owners, bit = self._owners, view.bit
        if any(owners.get(k, 0) & bit for k in keys):  # reported already (computed for another request)
            self._agree(view, kind)
            return
        self._drop_probe(self._probes.pop(request_id, None))
        while len(self._probes) >= self.max_probes:
            self._drop_probe(self._probes.pop(next(iter(self._probes))))
        self._probes[request_id] = _Probe(endpoint, kind, keys, view.stores)
        for k in keys:
            view.probe_keys[k] = view.probe_keys.get(k, 0) + 1

    def responded(self, request_id: str) -> None:
        """The request's first response bytes arrived: its prefill is over, its blocks are stored, and
        the engine's events about them are due within ``event_timeout``."""
        probe = self._probes.pop(request_id, None)
        if probe is None:
            return
        view = self._views.get(probe.endpoint)
        if view is None or probe.kind in view.agreed or view.last_seq is None:  # agreed, or publishing nothing
            self._drop_probe(probe)
            return
        probe.deadline = self.clock.now() + self.event_timeout
        if len(view.due) >= self.max_probes:
            self._drop_probe(view.due.popleft())
        view.due.append(probe)

    def finished(self, request_id: str) -> None:
        """The request ended; one that never responded may not have been computed: inconclusive."""
        self._drop_probe(self._probes.pop(request_id, None))

    def _drop_probe(self, probe: _Probe | None) -> None:
        view = None if probe is None else self._views.get(probe.endpoint)
        if probe is None or view is None:
            return
        for k in probe.keys:
            n = view.probe_keys.get(k, 0) - 1
            if n > 0:
                view.probe_keys[k] = n
            else:
                view.probe_keys.pop(k, None)

    def _expire(self, view: _View, now: float) -> None:
        while view.due and view.due[0].deadline <= now:
            probe = view.due.popleft()
            self._drop_probe(probe)
            if view.stores > probe.stores_at and probe.kind not in view.agreed:  # stores since, none of this prompt's
                misses = view.misses[probe.kind] = view.misses.get(probe.kind, 0) + 1
                if misses >= self.mismatch_after and probe.kind not in self._warned:
                    self._warned.add(probe.kind)
                    log.warning(
                        "KV events from endpoint %s never hold blocks of the %s prompts epp routed there (%d"
                        " checked; the engine reports blocks of %s tokens): epp's token ids for %s requests"
                        " differ from the engine's. Check the precise-prefix-cache-producer's `tokenizer`"
                        " (the served model's tokenizer and chat template; `auto` resolves it from the model"
                        " name) and blockSizeTokens (the engine's block size); until then such requests are"
                        " matched in the approximate index.",
                        probe.endpoint, probe.kind, misses, view.block_size, probe.kind,
                    )  # fmt: skip

    def _agree(self, view: _View, kind: str) -> None:
        view.agreed.add(kind)
        view.misses.pop(kind, None)
        self._reset_probes(view, kind)

    def _reset_agreement(self, view: _View) -> None:
        view.agreed.clear()
        view.misses.clear()
        self._reset_probes(view)

    def _reset_probes(self, view: _View, kind: str | None = None) -> None:
        """Forget the view's probes (of one kind, if given)."""
        for request_id in [r for r, p in self._probes.items()
                           if self._views.get(p.endpoint) is view and kind in (None, p.kind)]:  # fmt: skip
            del self._probes[request_id]
        if kind is None:
            view.probe_keys.clear()
            view.due.clear()
            return
        kept = deque(p for p in view.due if p.kind != kind)
        view.due.clear()
        view.probe_keys.clear()
        view.due.extend(kept)
        for probe in (*kept, *(p for p in self._probes.values() if self._views.get(p.endpoint) is view)):
            for k in probe.keys:
                view.probe_keys[k] = view.probe_keys.get(k, 0) + 1

    def agreed(self, endpoint: str, kind: str | None = None) -> bool:
        """Whether ``endpoint``'s engine has shown that its block keys agree with epp's (for prompts of
        ``kind``; any kind if None)."""
        view = self._views.get(endpoint)
        return view is not None and (bool(view.agreed) if kind is None else kind in view.agreed)

    def key_agreement(self, endpoint: str, kind: str) -> KeyAgreement:
        """Whether prompts of ``kind`` are known to hash like ``endpoint``'s engine."""
        view = self._views.get(endpoint)
        if view is None:
            return KeyAgreement.UNVERIFIED
        if view.due and view.due[0].deadline <= self.clock.now():
            self._expire(view, self.clock.now())
        if kind in view.agreed:
            return KeyAgreement.AGREED
        return KeyAgreement.MISMATCH if view.misses.get(kind, 0) >= self.mismatch_after else KeyAgreement.UNVERIFIED

    def set_connected(self, endpoint: str, connected: bool) -> None:
        self._view(endpoint).connected = connected

    def lost(self, endpoint: str) -> None:
        """A batch from ``endpoint`` could not be decoded: the feed is ``UNDECODABLE`` until one can,
        and what it carried is lost (a gap)."""
        view = self._view(endpoint)
        view.undecodable = True
        if view.last_seq is not None:
            self._start_resync(view, self.clock.now())

    def young(self, endpoint: str) -> bool:
        """Whether ``endpoint``'s view began mid-stream less than ``young_window`` ago: the engine may
        hold blocks it reported before epp subscribed (and reuses without reporting again)."""
        view = self._views.get(endpoint)
        return view is not None and self._young(view, self.clock.now())

    def _young(self, view: _View, now: float) -> bool:
        if view.joined_at is None:
            return False
        if now - view.joined_at < self.young_window:
            return True
        view.joined_at = None
        return False

    def _view(self, endpoint: str) -> _View:
        view = self._views.get(endpoint)
        if view is None:
            if self._free_bits:
                bit = self._free_bits.pop()
            else:
                bit, self._next_bit = self._next_bit, self._next_bit << 1
            view = self._views[endpoint] = _View(bit)
        return view

    def _keys(self, view: _View, event: Stored, model: str | None) -> Sequence[int]:
        hashes = event.block_hashes
        if len(event.token_ids) != len(hashes) * event.block_size:
            return hashes
        salt, extras = block_extras(event)
        if event.parent_hash is None:
            seed_name = event.lora_name or model or view.model
            if seed_name is None:
                return hashes
            parent = seed_hash(seed_name + (salt or ""))
        else:
            parent = view.alias.get(event.parent_hash, event.parent_hash)
            if parent not in view.held and parent not in view.suspect:
                return hashes
        blocks = token_blocks(event.token_ids, event.block_size)
        return chain_hashes(blocks, parent) if extras is None else chain_hashes_with_extras(blocks, parent, extras)

    def _stored(self, view: _View, event: Stored, model: str | None) -> None:
        owners, bit = self._owners, view.bit
        keys = self._keys(view, event, model)
        for engine_hash, key in zip(event.block_hashes, keys):
            view.suspect.discard(key)
            view.held[key] = view.held.get(key, 0) + 1
            owners[key] = owners.get(key, 0) | bit
            if key != engine_hash:
                view.alias[engine_hash] = key
        view.stores += 1
        view.block_size = event.block_size
        if view.probe_keys and not view.probe_keys.keys().isdisjoint(keys):
            self._agree_probed(view, set(keys))

    def _removed(self, view: _View, hashes: Iterable[int]) -> None:
        for engine_hash in hashes:
            key = view.alias.get(engine_hash, engine_hash)
            copies = view.held.get(key)
            if copies is not None and copies > 1:
                view.held[key] = copies - 1
                continue
            if copies is not None:
                del view.held[key]
            elif key in view.suspect:
                view.suspect.discard(key)
            else:
                continue  # stored before we subscribed (or during a gap): nothing to forget
            view.alias.pop(engine_hash, None)
            self._drop(view, key)

    def _drop(self, view: _View, key: int) -> None:
        mask = self._owners.get(key, 0) & ~view.bit
        if mask:
            self._owners[key] = mask
        else:
            self._owners.pop(key, None)

    def _clear(self, view: _View) -> None:
        for key in view.held.keys() | view.suspect:
            self._drop(view, key)
        view.held.clear()
        view.suspect.clear()
        view.alias.clear()
        view.deferred.clear()
        view.deferred_blocks = 0

    def _start_resync(self, view: _View, now: float) -> None:
        view.suspect.update(view.held)
        view.held.clear()
        view.resync_until = now + self.resync_window

    def _end_resync(self, view: _View) -> None:
        for key in view.suspect:
            self._drop(view, key)
        view.suspect.clear()
        view.alias = {h: k for h, k in view.alias.items() if k in view.held}
        view.resync_until = None

    def _agree_probed(self, view: _View, stored: set[int]) -> None:
        """Stored keys hit probes: their kinds agree."""
        probes = [*view.due, *(p for p in self._probes.values() if self._views.get(p.endpoint) is view)]
        for kind in {p.kind for p in probes if not stored.isdisjoint(p.keys)}:
            self._agree(view, kind)

    def feed_state(self, endpoint: str, kind: str | None = None) -> FeedState:
        """The feed's state for prompts of ``kind``; without a kind, ``LIVE`` when some kind agrees."""
        view = self._views.get(endpoint)
        return FeedState.NO_EVENTS if view is None else self._state(view, self.clock.now(), kind)

    def _state(self, view: _View, now: float, kind: str | None = None) -> FeedState:
        if view.connected is False:
            return FeedState.DISCONNECTED
        if view.undecodable:
            return FeedState.UNDECODABLE
        if view.last_seq is None:
            return FeedState.NO_EVENTS
        if view.resync_until is not None:
            if now < view.resync_until:
                return FeedState.RESYNCING
            self._end_resync(view)
        if view.awaiting_since is not None and now - view.awaiting_since > self.event_timeout:
            return FeedState.SILENT
        if (kind in view.agreed) if kind is not None else view.agreed:
            return FeedState.LIVE
        if view.due and view.due[0].deadline <= now:
            self._expire(view, now)
        misses = view.misses.get(kind, 0) if kind is not None else max(view.misses.values(), default=0)
        return FeedState.KEYS_MISMATCH if misses >= self.mismatch_after else FeedState.UNVERIFIED

    def held_blocks(self, endpoint: str) -> int:
        view = self._views.get(endpoint)
        return 0 if view is None else len(view.held) + len(view.suspect)

    def entries(self) -> int:
        """Engine-reported blocks over all endpoints plus the fallback's learned entries (a metric)."""
        return sum(map(self.held_blocks, self._views)) + self.fallback.entries()

    # -- PrefixIndex ---------------------------------------------------------------------------
    def match(self, hashes: Sequence[int], endpoints: Sequence[str], kind: str = COMPLETION) -> list[int]:
        """``PrefixIndex.match`` for a prompt of ``kind``: engine views whose keys agree for that kind,
        the fallback for the others."""
        now = self.clock.now()
        out = [0] * len(endpoints)
        live: list[tuple[int, int]] = []
        others: list[int] = []
        young: list[int] = []
        owners = self._owners
        for i, name in enumerate(endpoints):
            view = self._views.get(name)
            state = None if view is None else self._state(view, now, kind)
            if state is FeedState.UNVERIFIED or state is FeedState.KEYS_MISMATCH:
                assert view is not None
                if hashes and owners.get(hashes[0], 0) & view.bit:  # it reported this prompt's first block
                    self._agree(view, kind)
                    state = FeedState.LIVE
            if state is FeedState.LIVE:
                assert view is not None
                live.append((i, view.bit))
                if view.joined_at is not None and self._young(view, now):
                    young.append(i)
            else:
                others.append(i)
        learned = others + young
        if learned:
            for i, count in zip(learned, self.fallback.match(hashes, [endpoints[i] for i in learned])):
                out[i] = count
        if live and hashes:
            active = 0
            for _, bit in live:
                active |= bit
            stops: dict[int, int] = {}
            depth = 0
            for h in hashes:
                still = active & owners.get(h, 0)
                if still != active:
                    gone = active & ~still
                    stops.update((bit, depth) for _, bit in live if bit & gone)
                    active = still
                    if not active:
                        break
                depth += 1
            for i, bit in live:
                out[i] = max(out[i], stops.get(bit, depth))  # a young view: the better of both
        return out

    def add(self, endpoint: str, hashes: Sequence[int]) -> None:
        """epp sent ``endpoint`` this prompt: the fallback learns it, and events become due."""
        self.fallback.add(endpoint, hashes)
        view = self._views.get(endpoint)
        if view is not None and view.awaiting_since is None:
            view.awaiting_since = self.clock.now()

    def remove(self, endpoint: str) -> None:
        self.unseeded.discard(endpoint)
        view = self._views.get(endpoint)
        if view is not None:
            self._reset_probes(view)
            del self._views[endpoint]
            self._clear(view)
            self._free_bits.append(view.bit)
        self.fallback.remove(endpoint)

    def endpoint_added(self, endpoint: Endpoint) -> None:
        self.fallback.endpoint_added(endpoint)

    def endpoint_removed(self, endpoint: Endpoint) -> None:
        self.remove(endpoint.name)
