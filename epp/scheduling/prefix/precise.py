"""The precise prefix index: exactly the blocks engines report in their KV-cache events, with a
per-endpoint fallback to an approximate index whenever an endpoint's event feed cannot be trusted.

**Keys.** A block is keyed by the chained hash of its token ids (``chain_hashes(token_blocks(...),
seed)``, seed = the LoRA adapter's name or else the model in the event topic), recomputed from
``BlockStored.token_ids`` and the parent block's key — the way llm-d's indexer maps engine keys to
request keys. The request side hashes its prompt the same way (``tokens.engine_block_hashes``), so
keys agree whatever hash function the engine uses (vLLM's sha256, SGLang's). Engine hashes are kept
only where they differ from the key (an alias map, empty for ``epp sim`` whose hashes are these
keys), to resolve later ``BlockRemoved`` and parent references. A store whose parent is unknown
(events before we subscribed) is keyed by the engine hashes themselves: it matches nothing unless
the engine hashes like epp, never something wrong. ``cache_salt`` is not in ``token_ids`` and is not
distinguished.

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
  only while events are due.

A publisher restart (sequence going back) means a fresh engine with an empty cache: the view is
cleared. Memory: about 150 bytes per held block (a dict entry per endpoint and a shared owner mask),
bounded by ``max_blocks_per_endpoint`` per endpoint.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from epp._util.clock import Clock
from epp._util.hashing import chain_hashes, seed_hash, token_blocks
from epp.datastore import Endpoint
from epp.kvevents.decode import Cleared, KVEvent, Removed, Stored
from epp.scheduling.prefix.protocol import PrefixIndex


class FeedState(enum.Enum):
    LIVE = "live"
    NO_EVENTS = "no-events"
    DISCONNECTED = "disconnected"
    RESYNCING = "resyncing"
    SILENT = "silent"


class SeqCheck(enum.Enum):
    """What a batch's sequence number said about the feed."""

    IN_ORDER = "in-order"
    GAP = "gap"  # events were lost (also: first batch seen was not seq 0)
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
    ) -> None:
        if event_timeout <= 0 or resync_window < 0 or max_blocks_per_endpoint < 1:
            raise ValueError("event_timeout must be positive, resync_window not negative, max blocks at least 1")
        self.clock = clock
        self.fallback = fallback
        self.event_timeout = event_timeout
        self.resync_window = resync_window
        self.max_blocks_per_endpoint = max_blocks_per_endpoint
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
        if view.last_seq is not None and seq <= view.last_seq:
            self._clear(view)
            view.resync_until = None
            check = SeqCheck.RESTART
        if seq != (0 if check is SeqCheck.RESTART or view.last_seq is None else view.last_seq + 1):
            self._start_resync(view, now)
            check = SeqCheck.GAP if check is SeqCheck.IN_ORDER else check
        view.last_seq = seq
        view.awaiting_since = None
        for event in events:
            if isinstance(event, Stored):
                self._stored(view, event, model)
            elif isinstance(event, Removed):
                self._removed(view, event.block_hashes)
            elif isinstance(event, Cleared):
                self._clear(view)
                view.resync_until = None
        if len(view.held) + len(view.suspect) > self.max_blocks_per_endpoint:
            self._clear(view)
            self._start_resync(view, now)
            check = SeqCheck.OVERFLOW
        return check

    def set_connected(self, endpoint: str, connected: bool) -> None:
        self._view(endpoint).connected = connected

    def lost(self, endpoint: str) -> None:
        """A batch from ``endpoint`` could not be decoded: treat it as a gap."""
        view = self._view(endpoint)
        self._start_resync(view, self.clock.now())

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
        if event.parent_hash is None:
            seed_name = event.lora_name or model
            if seed_name is None:
                return hashes
            parent = seed_hash(seed_name)
        else:
            parent = view.alias.get(event.parent_hash, event.parent_hash)
            if parent not in view.held and parent not in view.suspect:
                return hashes
        return chain_hashes(token_blocks(event.token_ids, event.block_size), parent)

    def _stored(self, view: _View, event: Stored, model: str | None) -> None:
        owners, bit = self._owners, view.bit
        for engine_hash, key in zip(event.block_hashes, self._keys(view, event, model)):
            view.suspect.discard(key)
            view.held[key] = view.held.get(key, 0) + 1
            owners[key] = owners.get(key, 0) | bit
            if key != engine_hash:
                view.alias[engine_hash] = key

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

    def feed_state(self, endpoint: str) -> FeedState:
        view = self._views.get(endpoint)
        return FeedState.NO_EVENTS if view is None else self._state(view, self.clock.now())

    def _state(self, view: _View, now: float) -> FeedState:
        if view.connected is False:
            return FeedState.DISCONNECTED
        if view.last_seq is None:
            return FeedState.NO_EVENTS
        if view.resync_until is not None:
            if now < view.resync_until:
                return FeedState.RESYNCING
            self._end_resync(view)
        if view.awaiting_since is not None and now - view.awaiting_since > self.event_timeout:
            return FeedState.SILENT
        return FeedState.LIVE

    def held_blocks(self, endpoint: str) -> int:
        view = self._views.get(endpoint)
        return 0 if view is None else len(view.held) + len(view.suspect)

    def entries(self) -> int:
        """Engine-reported blocks over all endpoints plus the fallback's learned entries (a metric)."""
        return sum(len(v.held) + len(v.suspect) for v in self._views.values()) + self.fallback.entries()

    # -- PrefixIndex ---------------------------------------------------------------------------
    def match(self, hashes: Sequence[int], endpoints: Sequence[str]) -> list[int]:
        now = self.clock.now()
        out = [0] * len(endpoints)
        live: list[tuple[int, int]] = []
        others: list[int] = []
        for i, name in enumerate(endpoints):
            view = self._views.get(name)
            if view is not None and self._state(view, now) is FeedState.LIVE:
                live.append((i, view.bit))
            else:
                others.append(i)
        if others:
            for i, count in zip(others, self.fallback.match(hashes, [endpoints[i] for i in others])):
                out[i] = count
        if live and hashes:
            active = 0
            for _, bit in live:
                active |= bit
            stops: dict[int, int] = {}
            owners, depth = self._owners, 0
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
                out[i] = stops.get(bit, depth)
        return out

    def add(self, endpoint: str, hashes: Sequence[int]) -> None:
        """epp sent ``endpoint`` this prompt: the fallback learns it, and events become due."""
        self.fallback.add(endpoint, hashes)
        view = self._views.get(endpoint)
        if view is not None and view.awaiting_since is None:
            view.awaiting_since = self.clock.now()

    def remove(self, endpoint: str) -> None:
        view = self._views.pop(endpoint, None)
        if view is not None:
            self._clear(view)
            self._free_bits.append(view.bit)
        self.fallback.remove(endpoint)

    def endpoint_added(self, endpoint: Endpoint) -> None:
        self.fallback.endpoint_added(endpoint)

    def endpoint_removed(self, endpoint: Endpoint) -> None:
        self.remove(endpoint.name)
