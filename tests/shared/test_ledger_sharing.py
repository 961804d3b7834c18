"""Shared in-flight ledgers between picker replicas, without a network: the ledger's remote terms, the
TTFT scorer's export/import, and replay's virtual exchange."""

from __future__ import annotations

import random
from collections.abc import Sequence

import pytest

from epp._util.clock import VirtualClock
from epp.config import load_scheduler
from epp.datastore import EndpointMetrics, EndpointState
from epp.request import LLMRequest, RequestKind
from epp.scheduling.plugins.scorers.ttft_predictor import TTFTPredictorScorer
from epp.config.presets import DEFAULT_PRESET
from epp.scheduling.scheduler import Scheduler
from epp.scheduling.ttft import EndpointLedger, Flight
from epp.scheduling.ttft.ledger import NO_REMOTE, RemoteLoad
from epp.shared import PeerExport, VirtualExchange, participants
from tests.conftest import make_state


def flight(at: float, prefill: float) -> Flight:
    return Flight(at, prefill, prefill, 1000, 100)


def build(clock: VirtualClock, seed: int) -> tuple[Scheduler, TTFTPredictorScorer]:
    scheduler = load_scheduler(DEFAULT_PRESET, clock=clock, rng=random.Random(seed))
    scorer = next(p for p in scheduler.plugins if isinstance(p, TTFTPredictorScorer))
    return scheduler, scorer


def pool(n: int, clock: VirtualClock) -> list[EndpointState]:
    return [make_state(f"e{i}", address=f"10.0.0.{i + 1}",
                       metrics=EndpointMetrics(scraped_at=clock.now(), block_size=16, num_gpu_blocks=29202))
            for i in range(n)]  # fmt: skip


def request(rid: str, tokens: list[int]) -> LLMRequest:
    return LLMRequest(request_id=rid, kind=RequestKind.COMPLETIONS, model="m", prompt_token_ids=tokens,
                      max_tokens=64, stream=True)


def test_the_other_replicas_backlog_queues_with_this_ones_and_drains_from_when_it_was_reported() -> None:
    ledger = EndpointLedger()
    ledger.routed("a", flight(10.0, 1.0))  # own work until 11.0
    assert ledger.backlog(10.0) == pytest.approx(1.0)
    version = ledger.version
    ledger.set_remote(RemoteLoad(seconds=2.0, at=10.0, pending=2, requests=3, intervals=((10.0, 2.0),)))
    assert ledger.version > version  # cached predictions are recomputed
    assert ledger.backlog(10.0) == pytest.approx(3.0)
    assert ledger.backlog(10.5) == pytest.approx(2.5)
    assert ledger.own_backlog(10.5) == pytest.approx(0.5)  # what it reports: never the others' work
    version = ledger.version
    ledger.set_remote(RemoteLoad(seconds=2.0, at=10.0, pending=2, requests=3, intervals=((10.0, 2.0),)))
    assert ledger.version == version  # unchanged totals keep the cache
    ledger.set_remote(NO_REMOTE)
    assert ledger.backlog(10.0) == pytest.approx(1.0)


def test_an_idle_ledger_takes_the_remote_backlog_from_when_it_was_reported() -> None:
    ledger = EndpointLedger()
    ledger.set_remote(RemoteLoad(seconds=0.4, at=5.0, requests=1, intervals=((5.0, 0.4),)))
    assert ledger.backlog(5.1) == pytest.approx(0.3)
    assert ledger.backlog(6.0) == 0.0


def test_prefills_booked_unaware_of_each_other_run_back_to_back_and_new_bookings_queue_behind() -> None:
    ledger = EndpointLedger()
    ledger.routed("a", flight(10.0, 1.0))
    ledger.set_remote(RemoteLoad(seconds=1.0, at=10.0, pending=1, requests=1, intervals=((10.0, 1.0),)))
    assert ledger.backlog(10.0) == pytest.approx(2.0)  # one engine: one after the other, not side by side
    assert ledger.backlog(11.5) == pytest.approx(0.5)
    ledger.routed("b", flight(10.5, 1.0))
    assert ledger.pending["b"].eta == pytest.approx(13.0)  # after this epp's and the other's known work
    assert ledger.backlog(10.5) == pytest.approx(2.5)


def test_the_other_replicas_requests_are_not_booked_again_as_foreign_work() -> None:
    ledger = EndpointLedger()
    ledger.observe_scrape(1.0, 0, 0.5)
    ledger.set_remote(RemoteLoad(seconds=1.0, at=1.0, pending=2, requests=2))
    ledger.observe_scrape(2.0, 3, 0.5)  # 2 of the 3 are the other replica's: one foreign request
    assert ledger.busy_until == pytest.approx(2.5)


def test_replicas_exchange_ledgers_and_steer_around_each_others_work() -> None:
    """Replica A books a long prefill on one endpoint; once B imports A's export, B predicts that
    endpoint as busy and picks the other — without the exchange, B sees an idle pool and ties."""
    clock = VirtualClock(10.0)
    a_sched, a = build(clock, 0)
    b_sched, b = build(clock, 1)
    endpoints = pool(2, clock)
    long_prompt = list(range(60_000))
    chosen = a_sched.schedule(request("a1", long_prompt), endpoints).endpoints[0].name
    other = next(e.name for e in endpoints if e.name != chosen)
    b_sched.schedule(request("warm", [9] * 10), [next(e for e in endpoints if e.name == other)])  # B knows both
    b_sched.schedule(request("warm2", [8] * 10), [next(e for e in endpoints if e.name == chosen)])
    exchange = VirtualExchange([participants(a_sched.plugins), participants(b_sched.plugins)], period=0.025)
    exchange.tick(clock.now())  # A and B publish
    exchange.tick(clock.now())  # and read each other's
    remote = b.ledgers[chosen].remote
    assert remote.requests == 1 and remote.seconds > 0.5
    assert a.ledgers[chosen].remote.requests == 1  # B's own request there
    ttft = {name: p.ttft for name, p in zip((e.name for e in endpoints), b.predict({}, request("b1", [5] * 2000), endpoints))}  # type: ignore[arg-type]
    assert ttft[chosen] > ttft[other] + 0.5


def test_malformed_peer_exports_are_ignored() -> None:
    clock = VirtualClock(10.0)
    sched, scorer = build(clock, 0)
    endpoints = pool(1, clock)
    sched.schedule(request("r", [1] * 100), endpoints)
    scorer.import_shared([(0.0, {"ledger": {"e0": [1.0, 1, 1, 10, 10]}}), (0.0, {"ledger": "x"}),
                          (0.0, {"ledger": {"e0": ["1", 1, 1, 1, 1], "unknown": [1.0, 1, 1, 1, 1]}}),
                          (0.0, {"ledger": {"e0": [1.0, 1, 1, 1]}}), (0.0, {})], clock.now())  # fmt: skip
    assert scorer.ledgers["e0"].remote == RemoteLoad(1.0, clock.now(), 1, 1, 10, 10, ((clock.now(), 1.0),),
                                                     (clock.now() + 1.0,))
    assert "unknown" not in scorer.ledgers
    scorer.import_shared([], clock.now())  # no peers (or Redis away): back to local state
    assert scorer.ledgers["e0"].remote is NO_REMOTE


def test_exports_are_drained_by_their_age_and_ignored_past_the_ttl() -> None:
    clock = VirtualClock(0.0)
    sched, scorer = build(clock, 0)
    sched.schedule(request("r", [1] * 100), pool(1, clock))
    scorer.import_shared([(0.3, {"ledger": {"e0": [1.0, 1, 1, 0, 0]}})], 0.0)
    assert scorer.ledgers["e0"].remote.seconds == pytest.approx(0.7)

    class Recorder:
        def __init__(self, value: int) -> None:
            self.value = value
            self.seen: list[list[tuple[float, object]]] = []

        def export_shared(self, now: float) -> dict[str, object]:
            return {"v": self.value, "at": now}

        def import_shared(self, peers: Sequence[PeerExport], now: float) -> None:
            self.seen.append([(round(age, 9), payload["v"]) for age, payload in peers])

    one, two, three = Recorder(1), Recorder(2), Recorder(3)
    exchange = VirtualExchange([{"p": one}, {"p": two}, {"p": three}], period=0.1)
    for t in (0.0, 0.1, 0.2):
        exchange.tick(t)
    # each reads the others' previous exports (one period old), never its own; nothing at the first tick
    assert one.seen == [[], [(0.1, 2), (0.1, 3)], [(0.1, 2), (0.1, 3)]]
    assert two.seen[-1] == [(0.1, 1), (0.1, 3)]
    exchange.tick(1.5)  # a gap longer than the ttl: the exports of t=0.2 are dead
    assert one.seen[-1] == []


def test_a_replica_predicts_with_the_latency_learned_by_the_best_informed_replica() -> None:
    clock = VirtualClock(0.0)
    sched, scorer = build(clock, 0)
    sched.schedule(request("r", [1] * 100), pool(1, clock))
    learner = scorer.learner["e0"]
    own = learner.estimate
    taught = [60, 0.02, 0.05, 0.002, 0.01, 0.002, 0.004]
    scorer.import_shared([(0.0, {"learned": {"e0": [3, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0]}}),  # knows less than the best
                          (0.0, {"learned": {"e0": taught, "e9": taught}}),
                          (0.0, {"learned": {"e0": [99, -1.0, 0, 0, 0, 0, 0]}})], clock.now())  # malformed  # fmt: skip
    adopted = learner.estimate
    assert (adopted.per_step, adopted.per_token, adopted.decode_per_context) == (0.02, 0.05, 0.004)
    assert learner.own_estimate is own  # its own learning goes on, and is what it exports
    assert scorer.export_shared(clock.now())["learned"] == {}  # nothing learned here yet: nothing to teach
    scorer.import_shared([(0.0, {"learned": {"e0": taught}})], clock.now())
    assert learner.estimate is adopted  # unchanged: the same object, so cached predictions stay
    for _ in range(60):  # once it has learned more than the peer (or its memory's worth), its own rules
        learner.observe_prefill((1.0, 1.0, 0.1), 0.04)
    scorer.import_shared([(0.0, {"learned": {"e0": taught}})], clock.now())
    assert learner.estimate is learner.own_estimate
    exported = scorer.export_shared(clock.now())["learned"]["e0"]
    assert exported[0] == 60 and exported[1:] != taught[1:]
