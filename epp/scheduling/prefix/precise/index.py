"""The precise prefix index: exactly the blocks engines report in their KV-cache events, with a
per-endpoint fallback to an approximate index whenever an endpoint's event feed cannot be trusted.

**Keys** are chained token-block hashes (``keys``); **key agreement** — whether those keys are seen to
match the engine's — is tracked per prompt kind (``agreement``).

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
  and epp's prompt hashes agree (see ``agreement``);
* ``UNDECODABLE`` — the latest batch could not be decoded (a wire format epp does not know); the
  subscriber warns once per endpoint and counts the rest.

**Joining a running engine.** The first batch a view sees is its *baseline*, whatever its sequence
number: there is nothing to resynchronise yet. But an engine announces a block only when it computes
it, so blocks it cached before the subscription (a hot system prompt, reused without being announced
again) stay unknown. The subscriber backfills from vLLM's replay socket where one is configured (a
backfill reaching the publisher's batch 0 leaves nothing unseen); otherwise a view that began
mid-stream is *young* for ``young_window``, and a young LIVE endpoint matches the better of its
precise view and the fallback's learned one.

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

from collections import deque
from collections.abc import Iterable, Sequence

from epp._util.clock import Clock
from epp.contracts.kv_events import COMPLETION, Cleared, FeedState, KeyAgreement, KVEvent, Removed, SeqCheck, Stored
from epp.datastore import Endpoint
from epp.scheduling.prefix.precise.agreement import KeyAgreements
from epp.scheduling.prefix.precise.keys import block_keys
from epp.scheduling.prefix.precise.view import EndpointView
from epp.scheduling.prefix.protocol import PrefixIndex


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
        self.unseeded: set[str] = set()  # endpoints whose events wait for a model (``seed``)
        self._views: dict[str, EndpointView] = {}
        self._sequenced: set[str] = set()
        """Endpoints whose view has an event batch (``last_seq`` set): the others are matched in the fallback."""
        self.agreements = KeyAgreements(
            clock, self._views, event_timeout=event_timeout, mismatch_after=mismatch_after, max_probes=max_probes
        )
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
                self.agreements.reset(view)  # a fresh engine: perhaps another model or tokenizer
                check = SeqCheck.RESTART
            if seq != (0 if check is SeqCheck.RESTART else view.last_seq + 1):
                self._start_resync(view, now)
                check = SeqCheck.GAP if check is SeqCheck.IN_ORDER else check
        view.last_seq = seq
        self._sequenced.add(endpoint)
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

    def _apply(self, view: EndpointView, event: KVEvent, model: str | None) -> None:
        if isinstance(event, Stored):
            self._stored(view, event, model)
        elif isinstance(event, Removed):
            self._removed(view, event.block_hashes)
        else:
            self._clear(view)
            view.resync_until = None

    def _defer(self, view: EndpointView, event: Stored | Removed) -> None:
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

    def _apply_deferred(self, view: EndpointView) -> None:
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
            self.agreements.agree(view, kind)
            return
        self.agreements.watch(request_id, endpoint, view, kind, keys)

    def responded(self, request_id: str) -> None:
        """The request's first response bytes arrived: its prefill is over, its blocks are stored, and
        the engine's events about them are due within ``event_timeout``."""
        self.agreements.responded(request_id)

    def finished(self, request_id: str) -> None:
        """The request ended; one that never responded may not have been computed: inconclusive."""
        self.agreements.finished(request_id)

    def agreed(self, endpoint: str, kind: str | None = None) -> bool:
        """Whether ``endpoint``'s engine has shown that its block keys agree with epp's (for prompts of
        ``kind``; any kind if None)."""
        return self.agreements.agreed(endpoint, kind)

    def key_agreement(self, endpoint: str, kind: str) -> KeyAgreement:
        """Whether prompts of ``kind`` are known to hash like ``endpoint``'s engine."""
        return self.agreements.key_agreement(endpoint, kind)

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

    def _young(self, view: EndpointView, now: float) -> bool:
        if view.joined_at is None:
            return False
        if now - view.joined_at < self.young_window:
            return True
        view.joined_at = None
        return False

    def _view(self, endpoint: str) -> EndpointView:
        view = self._views.get(endpoint)
        if view is None:
            if self._free_bits:
                bit = self._free_bits.pop()
            else:
                bit, self._next_bit = self._next_bit, self._next_bit << 1
            view = self._views[endpoint] = EndpointView(bit)
        return view

    def _stored(self, view: EndpointView, event: Stored, model: str | None) -> None:
        owners, bit = self._owners, view.bit
        keys = block_keys(view, event, model)
        for engine_hash, key in zip(event.block_hashes, keys):
            view.suspect.discard(key)
            view.held[key] = view.held.get(key, 0) + 1
            owners[key] = owners.get(key, 0) | bit
            if key != engine_hash:
                view.alias[engine_hash] = key
        view.stores += 1
        view.block_size = event.block_size
        if view.probe_keys and not view.probe_keys.keys().isdisjoint(keys):
            self.agreements.agree_probed(view, set(keys))

    def _removed(self, view: EndpointView, hashes: Iterable[int]) -> None:
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

    def _drop(self, view: EndpointView, key: int) -> None:
        mask = self._owners.get(key, 0) & ~view.bit
        if mask:
            self._owners[key] = mask
        else:
            self._owners.pop(key, None)

    def _clear(self, view: EndpointView) -> None:
        for key in view.held.keys() | view.suspect:
            self._drop(view, key)
        view.held.clear()
        view.suspect.clear()
        view.alias.clear()
        view.deferred.clear()
        view.deferred_blocks = 0

    def _start_resync(self, view: EndpointView, now: float) -> None:
        view.suspect.update(view.held)
        view.held.clear()
        view.resync_until = now + self.resync_window

    def _end_resync(self, view: EndpointView) -> None:
        for key in view.suspect:
            self._drop(view, key)
        view.suspect.clear()
        view.alias = {h: k for h, k in view.alias.items() if k in view.held}
        view.resync_until = None

    def feed_state(self, endpoint: str, kind: str | None = None) -> FeedState:
        """The feed's state for prompts of ``kind``; without a kind, ``LIVE`` when some kind agrees."""
        view = self._views.get(endpoint)
        return FeedState.NO_EVENTS if view is None else self._state(view, self.clock.now(), kind)

    def _state(self, view: EndpointView, now: float, kind: str | None = None) -> FeedState:
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
            self.agreements.expire(view, now)
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
        if self._sequenced.isdisjoint(endpoints):  # no candidate's feed sent an event: all in the fallback
            return self.fallback.match(hashes, endpoints)
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
                    self.agreements.agree(view, kind)
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

    def discard(self, endpoint: str, hashes: Sequence[int]) -> None:
        """Only the fallback learnt from ``add``; the engine's events never report a failed request."""
        self.fallback.discard(endpoint, hashes)

    def remove(self, endpoint: str) -> None:
        self.unseeded.discard(endpoint)
        view = self._views.get(endpoint)
        if view is not None:
            self.agreements.reset_probes(view)
            del self._views[endpoint]
            self._sequenced.discard(endpoint)
            self._clear(view)
            self._free_bits.append(view.bit)
        self.fallback.remove(endpoint)

    def endpoint_added(self, endpoint: Endpoint) -> None:
        self.fallback.endpoint_added(endpoint)

    def endpoint_removed(self, endpoint: Endpoint) -> None:
        self.remove(endpoint.name)
