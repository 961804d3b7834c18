"""Events between active-active replicas (``SharesEvents``): a booking or a first token reaches the other
replicas a millisecond after it happens instead of at the next exchange (25–50 ms later), and another
replica's first tokens keep its prefills out of this replica's latency observations."""

from __future__ import annotations

import math
from collections.abc import Sequence

import pytest

from epp._util.clock import VirtualClock
from epp.datastore import EndpointState
from epp.scheduling.plugins.scorers.ttft_predictor import TTFTPredictorScorer
from epp.scheduling.scheduler import Scheduler
from epp.scheduling.ttft import EndpointLedger, Flight
from epp.scheduling.ttft.learn import DECODE, PREFILL, EndpointLearner
from epp.shared import VirtualExchange, participants
from epp.shared.protocol import EVENT_LATENCY, SharesEvents
from tests.scheduling.ttft.test_learn import BUDGET, truth
from tests.shared.test_ledger_sharing import build, pool, request


def test_a_booking_is_heard_a_millisecond_later_and_counted_once_when_an_export_holds_it() -> None:
    clock = VirtualClock(10.0)
    a_sched, a = build(clock, 0)
    b_sched, b = build(clock, 1)
    endpoints = pool(2, clock)
    for e in endpoints:  # b has a ledger for each endpoint
        b_sched.schedule(request(f"warm-{e.name}", [7] * 10), [e])
        b_sched.response_complete(request(f"warm-{e.name}", [7] * 10), e, {})
    exchange = VirtualExchange([participants(a_sched.plugins), participants(b_sched.plugins)], period=0.025,
                               clock=clock)  # fmt: skip
    assert isinstance(a, SharesEvents) and a.on_event is not None
    chosen = a_sched.schedule(request("a1", list(range(60_000))), endpoints).endpoints[0].name
    other = next(e for e in endpoints if e.name != chosen)
    exchange.deliver(clock.now())
    assert b.ledgers[chosen].remote.requests == 0  # still on its way
    clock.advance_to(10.0 + EVENT_LATENCY)
    exchange.deliver(clock.now())
    remote = b.ledgers[chosen].remote
    assert remote.requests == 1 and remote.pending == 1 and exchange.events == 1
    (start, seconds), = remote.intervals
    assert start == pytest.approx(10.0) and seconds > 0.5
    assert a.ledgers[chosen].remote.requests == 0  # never its own echoed
    assert b_sched.schedule(request("b1", [5] * 2000), endpoints).endpoints[0].name == other.name

    clock.advance_to(10.05)
    exchange.tick(10.025)  # a exports (holding a1), then b reads it: still one request, not two
    exchange.tick(10.05)
    assert b.ledgers[chosen].remote.requests == 1 and len(b.ledgers[chosen].remote.intervals) == 1
    at = next(e for e in endpoints if e.name == chosen)
    a_sched.response_started(request("a1", []), at)  # its prefill is over: b's view drops it at once
    clock.advance_to(10.05 + EVENT_LATENCY)
    exchange.deliver(clock.now())
    remote = b.ledgers[chosen].remote
    assert (remote.requests, remote.pending, remote.intervals) == (1, 0, ())  # still decoding there
    exchange.tick(10.075)  # an export taken before the first token arrives late: a1 stays out
    assert b.ledgers[chosen].remote.pending == 0
    a_sched.response_complete(request("a1", []), at, {})
    exchange.tick(10.1)
    exchange.tick(10.125)
    assert b.ledgers[chosen].remote.requests == 0  # gone with the export that no longer holds it
    b.import_events([[a.origin, 1, "b", chosen, 0.0, 1.0, 10, 10]], 0.0, clock.now())
    assert b.ledgers[chosen].remote.requests == 0  # an event the export already covered is not revived


def test_malformed_events_are_ignored() -> None:
    clock = VirtualClock(10.0)
    sched, scorer = build(clock, 0)
    sched.schedule(request("r", [1] * 100), pool(1, clock))
    before = scorer.ledgers["e0"].remote
    scorer.import_events([None, [], ["o", 1, "b", "e0", 0.0, -1.0, 1, 1], ["o", "1", "b", "e0", 0.0, 1.0, 1, 1],
                          ["o", 2, "x", "e0", 0.0], ["o", 3, "b", "e0", 0.0, 1.0, 1], ["o", 4, "f", "e0", "t", 1], ["o", 4, "f", "e0", 0.0],
                          ["o", 5, "b", "unknown", 0.0, 1.0, 1, 1], ["o", 6, "f", "e0", 1e300, 1]], 0.0, 10.0)  # fmt: skip
    assert scorer.ledgers["e0"].remote is before
    scorer.import_events([["o", 7, "b", "e0", 0.0, 1.0, 1, 1]], 0.0, 10.0)
    assert scorer.ledgers["e0"].remote.requests == 1


def two_replicas_on_one_endpoint(clock: VirtualClock) -> tuple[
        Scheduler, TTFTPredictorScorer, Scheduler, TTFTPredictorScorer, list[EndpointState], VirtualExchange]:
    """Replicas a and b (schedulers and scorers) on one endpoint, exchanging every 25 ms."""
    a_sched, a = build(clock, 0)
    b_sched, b = build(clock, 1)
    exchange = VirtualExchange([participants(a_sched.plugins), participants(b_sched.plugins)], period=0.025,
                               clock=clock)  # fmt: skip
    return a_sched, a, b_sched, b, pool(1, clock), exchange


def learn_behind_another_replica(told: bool, same_iteration: bool = False) -> EndpointLearner:
    """Replica A's learner for an endpoint where another replica's 4K prompt is always queued just ahead
    of A's 3K one (first come, first served); ``told``: A hears the other's first tokens."""
    learner = EndpointLearner(BUDGET)
    engine = truth(1.0)
    t = 0.0
    for i in range(40):
        learner.routed(f"a{i}", t, 3000, 0, 0, 0, streamed=True)
        theirs = t + engine.prefill_seconds(4000, 0, 0, 0, BUDGET)
        mine = theirs + engine.prefill_seconds(3000, 0, 0, 0, BUDGET)
        if told:
            learner.foreign_first_token(mine - 0.0005 if same_iteration else theirs)
        learner.started(f"a{i}", mine, 0, 0)
        learner.finished(f"a{i}", mine + 0.5, {"completion_tokens": 10}, 0, 0)
        t = mine + 1.0
    return learner


def test_another_replicas_prefill_ahead_is_not_learned_as_this_ones() -> None:
    exact = truth(1.0).prefill_seconds(3000, 0, 0, 0, BUDGET)
    unaware = learn_behind_another_replica(told=False)
    assert unaware.estimate.prefill_seconds(3000, 0, 0, 0, BUDGET) > 2 * exact  # theirs counted as its own
    told = learn_behind_another_replica(told=True)
    assert told.observations == 40
    assert told.estimate.prefill_seconds(3000, 0, 0, 0, BUDGET) == pytest.approx(exact, rel=0.05)
    shared = learn_behind_another_replica(told=True, same_iteration=True)
    assert shared.observations == 0  # their share of the iteration is unknown: nothing is learned


def test_first_tokens_reach_the_other_replicas_learners(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = VirtualClock(10.0)
    a_sched, a, b_sched, b, endpoints, exchange = two_replicas_on_one_endpoint(clock)
    b_sched.schedule(request("b1", [3] * 500), endpoints)
    a_sched.schedule(request("a1", [4] * 500), endpoints)
    clock.advance_to(10.2)
    a_sched.response_started(request("a1", [4] * 500), endpoints[0])
    clock.advance_to(10.3)
    exchange.deliver(clock.now())
    assert b.learner["e0"]._foreign == [pytest.approx(10.2)]
    seen: list[float] = []
    monkeypatch.setattr(EndpointLearner, "observe_prefill", lambda self, x, seconds: seen.append(seconds))
    b_sched.response_started(request("b1", [3] * 500), endpoints[0])
    clock.advance_to(10.5)
    b_sched.response_complete(request("b1", [3] * 500), endpoints[0], {"completion_tokens": 5})
    assert seen == [pytest.approx(0.1)]  # from a's first token (10.2) to b's (10.3), not from 10.0


def test_the_other_replicas_queued_prefills_weigh_the_work_a_choice_adds() -> None:
    """λ grows with the requests queued on the candidates: the other replicas' count as this one's."""
    clock = VirtualClock(10.0)
    sched, scorer = build(clock, 0)
    endpoints = pool(2, clock)
    for e in endpoints:  # both endpoints have ledgers, nothing of this replica's is queued
        sched.schedule(request(f"warm-{e.name}", [7] * 10), [e])
        sched.response_complete(request(f"warm-{e.name}", [7] * 10), e, {})
    alone = scorer.work_weight(endpoints, clock.now())
    assert alone == scorer.params.work_weight > 0
    export = {"ledger": {"e0": [3.0, 3, 3, 0, 0]}, "queue": {"e0": [[-2.0, 1.0, 1], [0.0, 1.0, 2], [1.0, 1.0, 3]]},
              "origin": "peer", "sequence": 3}  # fmt: skip
    scorer.import_shared([(0.0, export)], clock.now())
    remote = scorer.ledgers["e0"].remote
    assert remote.ends == (9.0, 11.0, 12.0) and remote.queued(clock.now()) == 2  # the first one is over
    late = scorer.ledgers["e0"].backlog(clock.now())
    scorer.import_shared([(0.0, {**export, "late": {"e0": 0.5}})], clock.now())  # its head is overdue, it says
    assert scorer.ledgers["e0"].backlog(clock.now()) == pytest.approx(late + 0.5)  # the queue moves out
    assert scorer.ledgers["e0"].remote.ends == (9.0, 11.0, 12.0)  # what counts as queued does not
    assert scorer.work_weight(endpoints, clock.now()) == pytest.approx(alone * (1 + 2 / 2))
    scorer.import_events([["peer", 4, "f", "e0", 0.0, 2]], 0.0, clock.now())  # the second's first token
    assert scorer.ledgers["e0"].remote.queued(clock.now()) == 1


def test_another_replicas_first_token_moves_this_ones_pending_prefills_behind_it() -> None:
    """First come, first served: what this replica still has pending queued behind the other's request,
    so it starts no earlier than that request's first token (and nothing moves earlier)."""
    ledger = EndpointLedger()
    ledger.routed("a", Flight(10.0, 1.0, 1.0, 1000, 10))  # predicted 10 → 11
    ledger.routed("b", Flight(10.0, 0.5, 0.5, 1000, 10))  # 11 → 11.5
    ledger.foreign_started(10.0)  # before a was predicted to start: nothing moves
    assert [f.eta for f in ledger.pending.values()] == [11.0, 11.5]
    version = ledger.version
    ledger.foreign_started(12.0)  # the engine is behind: a runs from 12 at the earliest, b after it
    assert [f.eta for f in ledger.pending.values()] == [13.0, 13.5]
    assert ledger.busy_until == 13.5 and ledger.version > version and ledger.backlog(12.0) == pytest.approx(1.5)


def test_another_replicas_prefill_interval_is_taken_out_of_this_ones_inter_token_time(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    clock = VirtualClock(10.0)
    a_sched, a = build(clock, 0)
    b_sched, b = build(clock, 1)
    endpoints = pool(1, clock)
    a.on_event = lambda: None  # an exchange takes the events (``take_events``)
    a_sched.schedule(request("a0", [2] * 100), endpoints)  # a knows e0
    b_sched.schedule(request("b1", [3] * 500), endpoints)
    clock.advance_to(10.1)
    b_sched.response_started(request("b1", [3] * 500), endpoints[0])
    clock.advance_to(10.6)
    a.learner["e0"].report(PREFILL, (1.0, 0.5, 0.0), 0.3, (10.2, 10.5, 0.25))  # type: ignore[misc]
    (event,) = [e for e in a.take_events() if e[2] == PREFILL]
    assert event[4:] == [0.0, 1.0, 0.5, 0.0, 0.3, pytest.approx(0.1), pytest.approx(0.3), 0.25]
    clock.advance_to(10.7)
    b.import_events([event], 0.1, clock.now())  # a's prefill on e0 from 10.2 to 10.5, 0.25 s beyond its steps
    b.import_events([[a.origin, 9, PREFILL, "e0", 0.0, 1.0, 0.5, 0.0, 0.3]], 0.0, clock.now())  # an older replica's
    seen: list[float] = []
    monkeypatch.setattr(EndpointLearner, "observe_decode", lambda self, z, seconds: seen.append(seconds))
    clock.advance_to(11.1)
    b_sched.response_complete(request("b1", [3] * 500), endpoints[0], {"completion_tokens": 11})
    assert seen == [pytest.approx((1.0 - 0.25) / 10)]  # not 0.1: a's prefill is not b's decode step


def test_prefill_intervals_heard_late_are_kept_in_order() -> None:
    learner = EndpointLearner(BUDGET)
    for start, end, extra in [(1.0, 2.0, 0.5), (5.0, 6.0, 0.25), (3.0, 4.0, 1.0), (3.5, 4.5, 9.0), (0.0, 0.5, 2.0)]:
        learner._span(start, end, extra)  # the fourth overlaps the third: skipped
    starts, ends, total = learner._spans
    assert (starts, ends, total) == ([0.0, 1.0, 3.0, 5.0], [0.5, 2.0, 4.0, 6.0], [0.0, 2.0, 2.5, 3.5, 3.75])
    assert learner._prefill_extra(1.5, 5.5) == pytest.approx(0.25 + 1.0 + 0.125)


def decode_learned_beside_another_replica(stream_end: float, monkeypatch: pytest.MonkeyPatch) -> tuple[float, float]:
    """Replicas a and b on one endpoint, exchanging every 25 ms: b's stream decodes 11 tokens from 10.1 to
    ``stream_end`` while a's 3K prompt, routed at 10.2, prefills from 10.2 to 10.5 (each of its iterations
    carries b's decodes). Returns the inter-token time b learned from its stream and what a's interval
    added inside b's window (as b recorded it by the end)."""
    clock = VirtualClock(10.0)
    a_sched, a, b_sched, b, endpoints, exchange = two_replicas_on_one_endpoint(clock)
    seen: list[float] = []
    observe = EndpointLearner.observe_decode

    def observe_decode(self: EndpointLearner, z: Sequence[float], seconds: float) -> None:
        if self is b.learner["e0"]:
            seen.append(seconds)
        observe(self, z, seconds)

    monkeypatch.setattr(EndpointLearner, "observe_decode", observe_decode)
    e0 = endpoints[0]
    b_sched.schedule(request("b1", [3] * 500), endpoints)
    steps = [(10.1, lambda: b_sched.response_started(request("b1", []), e0)),
             (10.2, lambda: a_sched.schedule(request("a1", [4] * 3000), endpoints)),
             (10.5, lambda: a_sched.response_started(request("a1", []), e0)),
             (stream_end, lambda: b_sched.response_complete(request("b1", []), e0, {"completion_tokens": 11})),
             (12.0, lambda: a_sched.response_complete(request("a1", []), e0, {"completion_tokens": 5})),
             (12.1, lambda: None)]
    share = 10.025
    for at, step in sorted(steps, key=lambda s: s[0]):
        while share <= at:  # the exchange's rounds and the events due by then, in time order
            clock.advance_to(share)
            exchange.deliver(share)
            exchange.tick(share)
            share = round(share + 0.025, 6)
        clock.advance_to(at)
        exchange.deliver(at)
        step()
    starts, ends, total = b.learner["e0"]._spans  # b's own prefill, 10.0–10.1, then a's
    assert starts[-1] == pytest.approx(10.2) and ends[-1] == pytest.approx(10.5)
    inside = (min(stream_end, 10.5) - 10.2) / 0.3 * (total[-1] - total[-2])
    assert len(seen) == 2 and inside > 0.1  # b's stream, then a's (heard as a's observation)
    return seen[0], inside


def test_a_stream_is_learned_without_another_replicas_prefill_heard_after_it_ended(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """b's stream ends at 10.6, after a's prefill (10.2–10.5) ended but before a told anyone its interval
    (a learns it at its next event there, its stream's end at 12.0, or now at its next export): b waits
    until a's export says every interval of a's that ended before it is out, and takes it out."""
    itl, inside = decode_learned_beside_another_replica(10.6, monkeypatch)
    assert itl == pytest.approx((0.5 - inside) / 10)


def test_a_stream_that_ends_during_another_replicas_prefill_waits_for_its_interval(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """b's stream ends at 10.4 while a's prefill, queued there (b heard its booking), still runs until 10.5:
    b waits for a's first token, then for a's interval, and takes out the two thirds of it in its window."""
    itl, inside = decode_learned_beside_another_replica(10.4, monkeypatch)
    assert itl == pytest.approx((0.3 - inside) / 10)


def test_without_peers_an_ended_stream_is_learned_at_once_and_held_ones_go_when_the_peers_go() -> None:
    learner = EndpointLearner(BUDGET)
    learned: list[str] = []
    learner.report = lambda kind, *_: learned.append(kind)  # type: ignore[assignment,misc]

    def stream(rid: str, at: float) -> None:
        """Its prefill from ``at`` to ``at`` + 0.1, then 10 more tokens in a second, the others' queued."""
        learner.routed(rid, at, 500, 0, 0, 0, streamed=True)
        learner.started(rid, at + 0.1, 0, 0)
        learner.finished(rid, at + 1.1, {"completion_tokens": 11}, 0, 0, foreign_queued=True)

    stream("s0", 0.0)  # no peers (one replica)
    assert learned == [PREFILL, DECODE]
    learner.peers_heard(9.0, False)  # peers, a round behind
    stream("s1", 10.0)
    assert learned == [PREFILL, DECODE, PREFILL]  # the stream waits for the others' intervals
    learner.peers_heard(20.0, True)
    assert learned == [PREFILL, DECODE, PREFILL]  # their prefill queued when it ended may still be running
    learner.peers_heard(math.inf, True)  # no peer left (or the shared store is away): nothing to wait for
    assert learned == [PREFILL, DECODE, PREFILL, DECODE]
    learner.peers_heard(19.0, True)
    stream("s2", 20.0)
    learner.routed("s3", 21.2, 500, 0, 0, 0, streamed=True)
    learner.started("s3", 21.5, 0, 0)  # a later first token: theirs are over by then (first come, first served)
    learner.peers_heard(21.4, True)
    assert learned[4:] == [PREFILL]  # s2's stream: their prefills may have run until 21.5
    learner.peers_heard(21.6, True)
    assert learned[4:] == [PREFILL, DECODE]
