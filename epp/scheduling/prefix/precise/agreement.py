"""Key agreement: whether epp's prompt keys are seen to match what an engine reports.

Keys only agree when epp tokenizes prompts exactly as the engine does (the
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
"""

from __future__ import annotations

import logging
from collections import deque
from dataclasses import dataclass

from epp._util.clock import Clock
from epp.contracts.kv_events import KeyAgreement
from epp.scheduling.prefix.precise.view import EndpointView

log = logging.getLogger("epp.scheduling.prefix.precise")


@dataclass(slots=True)
class Probe:
    """A routed prompt's first and last full block keys, watched for in the engine's stores."""

    endpoint: str
    kind: str
    keys: tuple[int, ...]
    stores_at: int  # the view's ``stores`` when routed
    deadline: float = 0.0


class KeyAgreements:
    """The probes of routed prompts and, per endpoint view and prompt kind, what they showed.

    ``views`` is the index's own map of endpoint views (shared, not copied): a probe names its
    endpoint, and a view removed from the map takes its probes' meaning with it."""

    def __init__(
        self, clock: Clock, views: dict[str, EndpointView], *, event_timeout: float, mismatch_after: int, max_probes: int
    ) -> None:
        self.clock = clock
        self.event_timeout = event_timeout
        self.mismatch_after = mismatch_after
        self.max_probes = max_probes
        self._views = views
        self._probes: dict[str, Probe] = {}  # request id → probe waiting for its first token, oldest first
        self._warned: set[str] = set()  # kinds whose mismatch was logged

    def watch(self, request_id: str, endpoint: str, view: EndpointView, kind: str, keys: tuple[int, ...]) -> None:
        """Watch for ``keys`` (a routed prompt's first and last full block) in ``view``'s stores."""
        self.drop(self._probes.pop(request_id, None))
        while len(self._probes) >= self.max_probes:
            self.drop(self._probes.pop(next(iter(self._probes))))
        self._probes[request_id] = Probe(endpoint, kind, keys, view.stores)
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
            self.drop(probe)
            return
        probe.deadline = self.clock.now() + self.event_timeout
        if len(view.due) >= self.max_probes:
            self.drop(view.due.popleft())
        view.due.append(probe)

    def finished(self, request_id: str) -> None:
        """The request ended; one that never responded may not have been computed: inconclusive."""
        self.drop(self._probes.pop(request_id, None))

    def drop(self, probe: Probe | None) -> None:
        view = None if probe is None else self._views.get(probe.endpoint)
        if probe is None or view is None:
            return
        for k in probe.keys:
            n = view.probe_keys.get(k, 0) - 1
            if n > 0:
                view.probe_keys[k] = n
            else:
                view.probe_keys.pop(k, None)

    def expire(self, view: EndpointView, now: float) -> None:
        while view.due and view.due[0].deadline <= now:
            probe = view.due.popleft()
            self.drop(probe)
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

    def agree(self, view: EndpointView, kind: str) -> None:
        view.agreed.add(kind)
        view.misses.pop(kind, None)
        self.reset_probes(view, kind)

    def reset(self, view: EndpointView) -> None:
        view.agreed.clear()
        view.misses.clear()
        self.reset_probes(view)

    def reset_probes(self, view: EndpointView, kind: str | None = None) -> None:
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
            self.expire(view, self.clock.now())
        if kind in view.agreed:
            return KeyAgreement.AGREED
        return KeyAgreement.MISMATCH if view.misses.get(kind, 0) >= self.mismatch_after else KeyAgreement.UNVERIFIED

    def agree_probed(self, view: EndpointView, stored: set[int]) -> None:
        """Stored keys hit probes: their kinds agree."""
        probes = [*view.due, *(p for p in self._probes.values() if self._views.get(p.endpoint) is view)]
        for kind in {p.kind for p in probes if not stored.isdisjoint(p.keys)}:
            self.agree(view, kind)
