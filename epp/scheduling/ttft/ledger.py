"""What this epp has sent one endpoint and not yet seen answered: load a scrape cannot show yet.

Requests are kept in routing order in two stages:

* **pending** — routed, no first token yet: prefill work queued ahead of the next request, each with
  the prefill seconds predicted for it on this endpoint when it was routed;
* **decoding** — first token seen, response not complete: sequences that slow every later iteration.

The prefill backlog is a fluid queue: ``busy_until`` is when the work routed so far should end.
Routing appends its cost at ``max(busy_until, now)`` and time drains it, so a burst sees each of its
own requests immediately. Events correct the prediction: a first token for request *r* means *r* and
everything routed before it has prefilled (the engine admits first-come first-served, and a chunked
prompt keeps the token budget until it is done), so the backlog is re-anchored to ``now`` plus the
predicted cost of what is still pending — later if the engine ran slower than predicted, sooner if
faster. A completion without a first token (a caller that cannot see first bytes) is a late signal and
can only shorten the backlog. Until the first token comes, a request past its predicted first token is
taken to have missed the cache hit it was predicted (the usual reason a prefill overruns): everything
queued moves out by the difference, so an endpoint stuck on a long prompt does not look idle. A
streamed request still silent past even its cold prefill says the engine runs slower than predicted
(an unknown engine still being learned, a batch heavier than thought, a KV cache full): the work queued
behind it is stretched by the same factor, ``(now − its start) ÷ its cold prefill``, at most
``MAX_SLOWNESS`` — a slow engine loses traffic while it is slow, not only after its next first token
(not while other replicas' prefills are merged into the queue: the head may then be late behind theirs).
A non-streamed head's first bytes come at its end, so its silence says nothing: that backlog still
drains with time, and a caller that only reports completions does not pin the endpoint. Entries older than the expiry cut-off are forgotten, so a lost request
never pins load on an endpoint.

Other routers (another epp replica, a client bypassing epp) send the engine work this ledger never sees
routed. A scrape shows it only as sequence counts, and a foreign request that is prefilling counts as
*running* — with two replicas that is most of the foreign prefill ahead of a pick (84 % of its tokens
on the Mooncake conversation trace at ×2.83; the scraped waiting queue held the rest). So each new
scrape is compared with what this epp had in the engine at that instant (routed by then, not finished
by then): sequences beyond that are foreign, and any rise in their number since the previous scrape is
new foreign work, appended to the backlog (the engine admits first-come first-served, so requests this
epp routes later queue behind it) at the typical cold prefill of this epp's own picks. A first token
re-anchors only what this epp has pending. With no other router the count never rises and nothing is
booked.

Active-active replicas of epp each keep their own ledger and publish it per endpoint (shared state,
``epp.shared``): totals and the predicted prefill intervals of their pending requests. Each ledger then
holds what the other replicas last reported (``RemoteLoad``, a few tens of milliseconds old). The engine
runs everyone's prefills one after the other, so the backlog is the fluid queue over the union of this
epp's and the others' intervals in start order (two replicas that booked the same slot unaware of each
other end up back to back, not overlapping); a new booking starts after the others' known work; their
requests count as this epp's own when a scrape is compared (so they are not booked again as foreign);
and a replica reports only its own work, never what it heard from the others.
"""

from __future__ import annotations

import heapq
from bisect import bisect_right
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass

MAX_SLOWNESS = 4.0
"""How far an overdue streamed head stretches the work queued behind it (see the module docstring)."""


@dataclass(frozen=True, slots=True)
class RemoteLoad:
    """What the other replicas have in flight on one endpoint, summed, as of ``at`` (this epp's clock):
    ``seconds`` of predicted prefill still queued, ``pending`` requests without a first token,
    ``requests`` in flight, the KV ``context_tokens`` they hold and the ``output_tokens`` they may
    generate; ``intervals``: their queued prefills as (start, seconds), in start order, moved out by
    their replicas' ``lateness``; ``ends``: their first tokens as their replicas predicted them, sorted."""

    seconds: float = 0.0
    at: float = float("-inf")
    pending: int = 0
    requests: int = 0
    context_tokens: int = 0
    output_tokens: int = 0
    intervals: tuple[tuple[float, float], ...] = ()
    ends: tuple[float, ...] = ()

    def queued(self, now: float) -> int:
        """Their requests predicted to be still waiting for (or in) their prefill at ``now``, read as
        ``EndpointLedger.queued`` reads this epp's: by the first token predicted when booked."""
        return len(self.ends) - bisect_right(self.ends, now)


def queue_end(intervals: Iterable[tuple[float, float]]) -> float:
    """When a server that takes work in start order ends ``intervals`` ((start, seconds), sorted)."""
    busy = float("-inf")
    for start, seconds in intervals:
        busy = max(busy, start) + seconds
    return busy


NO_REMOTE = RemoteLoad()


@dataclass(slots=True)
class Flight:
    """One request in flight on the endpoint. ``prefill_seconds`` is its predicted prefill there,
    ``cold_seconds`` the same without any cache hit; ``output_tokens`` is what it may generate (its
    ``max_tokens``, or an assumed length when the client set none). ``eta`` is its predicted first
    token, set when it is booked; ``streamed``: its first bytes are its first token (not its end)."""

    routed_at: float
    prefill_seconds: float
    cold_seconds: float
    prompt_tokens: int
    output_tokens: int
    eta: float = 0.0
    started_at: float | None = None
    streamed: bool = True

    @property
    def context_tokens(self) -> int:
        """KV it holds on average while decoding: the prompt plus half its output."""
        return self.prompt_tokens + self.output_tokens // 2


class EndpointLedger:
    """One endpoint's requests in flight from this epp, with running totals so reads are O(1)
    (except the scrape-window counts, which only visit requests newer than the scrape).

    ``version`` changes with every change of state, so a reader may cache what it derived from the
    ledger (``BatchPredictor`` does, between scrapes) and recompute only when it moved. ``oldest`` is
    at most the routing time of every request held, so ``expire`` has nothing to do while the cut-off
    is not past it (a check the scorer makes per endpoint per pick)."""

    __slots__ = (
        "_etas", "_finishes", "_foreign", "_foreign_work", "_scraped_at", "busy_until", "context_tokens", "decoding",
        "oldest", "output_tokens", "pending", "remote", "version",
    )  # fmt: skip

    def __init__(self) -> None:
        self.pending: dict[str, Flight] = {}
        self.decoding: dict[str, Flight] = {}
        self.busy_until = float("-inf")
        self.context_tokens = 0
        self.output_tokens = 0
        self.version = 0
        self.oldest = float("inf")
        self._etas: tuple[int, list[float]] = (-1, [])
        self._foreign = 0
        self._foreign_work = 0.0
        """Foreign prefill seconds booked since the last re-anchor (which forgets them)."""
        self._scraped_at = float("-inf")
        self._finishes: deque[tuple[float, float]] = deque()
        """(routed, finished) of requests that ended after the last scrape seen: they were in the engine
        at a scrape taken before they ended."""
        self.remote = NO_REMOTE

    def __len__(self) -> int:
        return len(self.pending) + len(self.decoding)

    # -- events -----------------------------------------------------------------------------------
    def routed(self, request_id: str, flight: Flight) -> None:
        if request_id in self.pending or request_id in self.decoding:
            self.finished(request_id, flight.routed_at)  # a reused id: the old one is over
        self.version += 1
        self.oldest = min(self.oldest, flight.routed_at)
        start = max(self.busy_until, flight.routed_at)
        if self.remote.intervals:  # behind the others' known work too
            start = max(start, self.backlog_terms()[0])
        self.busy_until = start + flight.prefill_seconds
        flight.eta = self.busy_until
        self.pending[request_id] = flight
        self.context_tokens += flight.context_tokens
        self.output_tokens += flight.output_tokens

    def started(self, request_id: str, now: float) -> None:
        """``request_id``'s first token arrived: it and every request routed before it have prefilled."""
        if request_id not in self.pending:
            return
        self.version += 1
        self._start_through(request_id, now)
        self._reanchor(now)

    def foreign_started(self, at: float) -> None:
        """Another replica's request had its first token here at ``at`` (shared state): this epp's requests
        still pending here queued behind it (first come, first served), so none of them started before
        ``at``: they run back to back from then at the earliest (moved later only) — the re-anchor a first
        token of its own gives, which with N replicas would come N times less often."""
        t = at
        moved = False
        for flight in self.pending.values():
            start = max(t, flight.eta - flight.prefill_seconds)
            if start + flight.prefill_seconds > flight.eta:
                flight.eta = start + flight.prefill_seconds
                moved = True
            t = flight.eta
        if moved:
            self.busy_until = max(self.busy_until, t)
            self.version += 1

    def finished(self, request_id: str, now: float) -> None:
        """``request_id``'s response ended (or it failed): forget it."""
        self.version += 1
        if request_id in self.pending:
            self._start_through(request_id, now)
            if now + self._pending_seconds() < self.busy_until:
                self._reanchor(now)
        flight = self.decoding.pop(request_id, None)
        if flight is not None:
            self._drop(flight)
            if now > self._scraped_at:
                self._finishes.append((flight.routed_at, now))

    def abandoned(self, request_id: str) -> None:
        """``request_id`` failed without an answer (connect failure, 5xx, reset): forget it without the
        lessons ``finished`` draws — it says nothing about the prefills routed before it, and its own
        predicted prefill leaves the backlog (work the engine never did)."""
        flight = self.pending.pop(request_id, None)
        if flight is not None:
            self.busy_until -= flight.prefill_seconds
            for later in self.pending.values():
                if later.routed_at >= flight.routed_at:
                    later.eta -= flight.prefill_seconds
        else:
            flight = self.decoding.pop(request_id, None)
        if flight is None:
            return
        self.version += 1
        self._drop(flight)

    def set_remote(self, remote: RemoteLoad) -> None:
        """The other replicas' latest totals on this endpoint (``NO_REMOTE``: none, or unreachable)."""
        if remote != self.remote:
            self.remote = remote
            self.version += 1

    def observe_scrape(self, scraped_at: float, sequences: int, typical_cold_seconds: float) -> None:
        """A scrape (taken at ``scraped_at``) counted ``sequences`` (running + waiting) in the engine: book
        the rise in foreign sequences since the previous scrape as foreign prefill work, each
        ``typical_cold_seconds`` long. Older or repeated scrapes are ignored."""
        if scraped_at <= self._scraped_at:
            return
        self._scraped_at = scraped_at
        finishes = self._finishes
        while finishes and finishes[0][1] <= scraped_at:
            finishes.popleft()
        own = sum(1 for stage in (self.pending, self.decoding) for f in stage.values() if f.routed_at <= scraped_at)
        own += sum(1 for routed, _ in finishes if routed <= scraped_at) + self.remote.requests
        foreign = max(0, sequences - own)
        arrived = foreign - self._foreign
        self._foreign = foreign
        if arrived > 0 and typical_cold_seconds > 0:
            self.version += 1
            self.busy_until = max(self.busy_until, scraped_at) + arrived * typical_cold_seconds
            self._foreign_work += arrived * typical_cold_seconds

    def expire(self, cutoff: float) -> list[str]:
        """Forget requests routed before ``cutoff`` (oldest first; both stages are in routing order);
        returns their ids."""
        while self._finishes and self._finishes[0][1] < cutoff:  # no scrape came to prune them
            self._finishes.popleft()
        if self.oldest >= cutoff:
            return []
        expired = []
        for stage in (self.pending, self.decoding):
            while stage:
                request_id, flight = next(iter(stage.items()))
                if flight.routed_at >= cutoff:
                    break
                del stage[request_id]
                self.version += 1
                self._drop(flight)
                expired.append(request_id)
        self.oldest = min((f.routed_at for stage in (self.pending, self.decoding) for f in stage.values()),
                          default=float("inf"))
        return expired

    # -- reads ------------------------------------------------------------------------------------
    def backlog(self, now: float) -> float:
        """Predicted seconds of prefill work queued ahead of a request arriving ``now`` (this epp's and,
        with shared state, the other replicas')."""
        return _backlog(*self.backlog_terms(), now)

    def own_backlog(self, now: float) -> float:
        """``backlog`` of this epp's own requests only: what it reports to the other replicas."""
        return _backlog(*self._own_terms(), now)

    def backlog_terms(self) -> tuple[float, float, float, float, float, float, float]:
        """What ``backlog`` reads, independent of time (so it can be cached per ``version`` and evaluated
        for many endpoints at once): ``busy_until``; the oldest pending request's predicted first token
        (inf when none is pending); both moved out by what it adds if overdue (cold minus predicted
        prefill); when its prefill was predicted to start; 1 ÷ its cold prefill (0 if not streamed: no
        slowness read); and the predicted work queued behind it (the later pending requests' and the
        foreign work booked since the last re-anchor). The other replicas' prefills queue with this epp's,
        in start order (module docstring); while they have any, no slowness is read. Finite wherever the
        batch computes with them (no inf − inf). O(pending requests)."""
        busy_until, head_eta, busy_cold, head_cold_eta, head_start, per_cold, behind = self._own_terms()
        remote = self.remote.intervals
        if remote:
            # the others' prefills interleave with this epp's, so this epp's head may be late only because
            # theirs went first: no slowness is read from it (per_cold 0), the merged queue drains with time
            merged = max(busy_until, queue_end(heapq.merge(self.own_intervals(), remote)))
            busy_cold += merged - busy_until
            busy_until, per_cold, behind = merged, 0.0, 0.0
        return busy_until, head_eta, busy_cold, head_cold_eta, head_start, per_cold, behind

    def own_intervals(self) -> list[tuple[float, float]]:
        """This epp's pending prefills as (predicted start, seconds): what it reports to the others."""
        return [(f.eta - f.prefill_seconds, f.prefill_seconds) for f in self.pending.values()]

    def lateness(self, now: float) -> float:
        """How much later than ``own_intervals`` say this epp's pending work ends, by its own backlog at
        ``now`` — a head past its predicted first token, an engine slower than predicted (what ``backlog``
        reads from this epp's requests, which the other replicas cannot: an interval that ended on paper
        would drain from their view while the engine still works on it); 0 when on time."""
        intervals = self.own_intervals()
        return max(0.0, now + self.own_backlog(now) - queue_end(intervals)) if intervals else 0.0

    def _own_terms(self) -> tuple[float, float, float, float, float, float, float]:
        if not self.pending:
            return self.busy_until, float("inf"), self.busy_until, float("inf"), 0.0, 0.0, 0.0
        flights = iter(self.pending.values())
        head = next(flights)
        overrun = head.cold_seconds - head.prefill_seconds
        per_cold = 1.0 / max(head.cold_seconds, 1e-6) if head.streamed else 0.0
        behind = sum(f.prefill_seconds for f in flights) + self._foreign_work if per_cold else 0.0
        return (self.busy_until, head.eta, self.busy_until + overrun, head.eta + overrun, head.eta - head.prefill_seconds,
                per_cold, behind)

    def newest_eta(self) -> float:
        """The newest pending request's predicted first token (-inf when none is pending): with the
        oldest's (``backlog_terms``) it bounds ``queued`` — all pending are queued before the oldest's,
        none from the newest's on."""
        return next(reversed(self.pending.values())).eta if self.pending else float("-inf")

    def queued(self, now: float) -> int:
        """Requests predicted to be still waiting for (or in) their prefill at ``now``. Predicted first
        tokens never decrease in routing order (a booking ends after the work before it, a re-anchor
        lays the pending back to back), so this is a binary search in them (kept per ``version``)."""
        if not self.pending:
            return 0
        if self._etas[0] != self.version:
            self._etas = (self.version, [f.eta for f in self.pending.values()])
        etas = self._etas[1]
        return len(etas) - bisect_right(etas, now)

    def mean_output_tokens(self, default: int) -> float:
        n = len(self)
        return self.output_tokens / n if n else float(default)

    def routed_after(self, t: float) -> tuple[int, int]:
        """(requests, prompt tokens) routed after ``t`` and still pending: what a scrape taken at ``t``
        cannot contain."""
        count = tokens = 0
        for flight in reversed(self.pending.values()):
            if flight.routed_at <= t:
                break
            count += 1
            tokens += flight.prompt_tokens
        return count, tokens

    def unstarted_at(self, t: float) -> int:
        """How many of this epp's requests were routed by ``t`` and had no first token at ``t``: an
        upper bound on the engine's waiting queue at ``t`` if no one else sends it work."""
        count = sum(1 for f in self.pending.values() if f.routed_at <= t)
        for flight in reversed(self.decoding.values()):
            if flight.started_at is None or flight.started_at <= t:
                break
            if flight.routed_at <= t:
                count += 1
        return count

    # -- helpers ----------------------------------------------------------------------------------
    def _start_through(self, request_id: str, now: float) -> None:
        pending = self.pending
        while pending:
            first = next(iter(pending))
            flight = pending.pop(first)
            flight.started_at = now
            self.decoding[first] = flight
            if first == request_id:
                return

    def _reanchor(self, now: float) -> None:
        """What is still pending runs back to back from ``now``."""
        t = now
        for flight in self.pending.values():
            t += flight.prefill_seconds
            flight.eta = t
        self.busy_until = t
        self._foreign_work = 0.0

    def _pending_seconds(self) -> float:
        return sum(f.prefill_seconds for f in self.pending.values())

    def _drop(self, flight: Flight) -> None:
        self.context_tokens -= flight.context_tokens
        self.output_tokens -= flight.output_tokens


def _backlog(busy_until: float, head_eta: float, busy_cold: float, head_cold_eta: float, head_start: float,
             per_cold: float, behind: float, now: float) -> float:
    """``EndpointLedger.backlog`` from its terms (``BatchPredictor`` does the same operations on arrays)."""
    if head_eta >= now:
        return max(0.0, busy_until - now)
    # overdue: assume it found nothing cached, so everything queued moves out; past even that, a
    # streamed head stretches the work queued behind it by how much slower the engine runs
    if not per_cold:
        return max(0.0, busy_cold - now)
    slowness = min(MAX_SLOWNESS, max(1.0, (now - head_start) * per_cold))
    return behind * slowness + max(0.0, head_cold_eta - now)
