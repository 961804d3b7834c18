"""The vectorised predictor equals the scalar one bit for bit, on random endpoint states and ledgers,
before and after the states move (its per-endpoint cache must notice every change)."""

from __future__ import annotations

import math
import random
from collections.abc import Iterator

import pytest

from epp.datastore import EndpointMetrics, EndpointState
from epp.scheduling.ttft import BatchPredictor, EndpointLedger, Flight, LatencyLearner, TTFTPredictor
from tests.conftest import make_state

NOW = 1000.0
CAPACITY = 467_232
SHAPES = [(16, 8192), (32, 256)]  # (block size, token budget): 256 < the decodes of some states


def _metrics(rng: random.Random, capacity: int) -> EndpointMetrics | None:
    if rng.random() < 0.1:
        return None
    blocks = rng.choice([None, 0, capacity // 16, rng.randrange(100, 20000)])
    return EndpointMetrics(
        scraped_at=NOW - rng.uniform(0, 2), waiting=rng.randrange(12), running=rng.choice([0, rng.randrange(300)]),
        kv_usage=rng.choice([0.0, rng.random(), 0.999]), block_size=rng.choice([0, 16]), num_gpu_blocks=blocks,
    )


def _move(rng: random.Random, ledger: EndpointLedger, serial: list[int]) -> None:
    """A few random ledger events: routes (some in the scrape window), first tokens, completions, expiry."""
    for _ in range(rng.randrange(6)):
        event = rng.random()
        ids = [*ledger.pending, *ledger.decoding]
        if event < 0.5 or not ids:
            serial[0] += 1
            prefill = rng.uniform(0.001, 3.0)
            ledger.routed(f"r{serial[0]}", Flight(NOW - rng.uniform(0, 4), prefill, prefill * rng.uniform(1, 4),
                                                  rng.randrange(1, 40000), rng.randrange(1, 2000),
                                                  streamed=rng.random() < 0.8))
        elif event < 0.7:
            ledger.started(rng.choice(ids), NOW - rng.uniform(0, 1))
        elif event < 0.9:
            ledger.finished(rng.choice(ids), NOW - rng.uniform(0, 1))
        else:
            ledger.expire(NOW - rng.uniform(2, 5))


def _state(rng: random.Random, name: str, capacity: int) -> EndpointState:
    state = make_state(name, metrics=_metrics(rng, capacity))
    state.stale = rng.random() < 0.15
    return state


def _assert_equal(batch: BatchPredictor, states: list[EndpointState], ledgers: list[EndpointLedger],
                  rng: random.Random) -> None:
    scalar = batch.predictor
    prompt = rng.choice([0, 1, 17, rng.randrange(1, 3000), rng.randrange(1, 140000)])
    per_match = rng.choice([1, 16])  # matches counted in tokens, or in the prefix index's blocks
    matched = [rng.choice([0, prompt, rng.randrange(0, prompt + 40)]) // per_match for _ in states]
    if rng.random() < 0.3:  # few matched endpoints (computed row by row), the others unmatched
        matched = [m if rng.random() < 0.1 else 0 for m in matched]
    since = [rng.choice([None, 0, rng.randrange(1, 4_000_000)]) for _ in states]
    now = NOW + rng.uniform(-3, 3)
    written = {i: s for i, s in enumerate(since) if s}
    scrapes = [None if s.stale else s.metrics for s in states] if rng.random() < 0.5 else None  # the caller's, or not
    got = batch.predict([s.name for s in states], states, ledgers, prompt, matched, written, now, per_match, scrapes)
    assert len(got) == len(states)
    for i, (state, ledger) in enumerate(zip(states, ledgers)):
        expected = scalar.predict(state, ledger, prompt, matched[i] * per_match, since[i], now)
        assert got[i] == expected  # exact, not approx
        assert batch.load(state, ledger) == scalar.decode_load(state, ledger)  # the cached row's
    fresh = EndpointLedger()  # not the ledger the row was derived from: computed
    assert batch.load(states[0], fresh) == scalar.decode_load(states[0], fresh)
    for at in (now, NOW - 10, NOW + rng.uniform(-3, 3), math.inf):
        assert batch.queued(ledgers, at) == sum(ledger.queued(at) for ledger in ledgers)


def _teach(rng: random.Random, learner: LatencyLearner, name: str) -> None:
    """A random observation: this endpoint's coefficients move (and, while it warms up, every
    endpoint's blend with the pool does)."""
    endpoint = learner[name]
    if rng.random() < 0.5:
        endpoint.observe_prefill((rng.randrange(1, 4), rng.uniform(0, 20), rng.uniform(0, 400)), rng.uniform(0, 2))
    else:
        endpoint.observe_decode((1.0, rng.uniform(0, 3), rng.uniform(0, 20)), rng.uniform(0.001, 0.1))


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("seed", range(6))
def test_batch_predictions_equal_the_scalar_predictor_on_random_states(shape: tuple[int, int], seed: int) -> None:
    rng = random.Random(seed)
    block_size, budget = shape
    learner = LatencyLearner(budget)
    batch = BatchPredictor(TTFTPredictor(learner, block_size, rng.choice([1, 256, 1000]), CAPACITY))
    names = [f"e{i}" for i in range(rng.randrange(1, 40))]
    states = [_state(rng, name, CAPACITY) for name in names]
    ledgers = [EndpointLedger() for _ in names]
    serial = [0]
    picked = list(range(len(names)))
    for _ in range(40):  # rounds: the cached rows must follow every kind of change
        for i, name in enumerate(names):
            change = rng.random()
            if change < 0.3:
                _move(rng, ledgers[i], serial)
            elif change < 0.4:
                states[i].metrics = _metrics(rng, CAPACITY)  # a scrape
            elif change < 0.45:
                states[i].stale = not states[i].stale
            elif change < 0.47:
                ledgers[i] = EndpointLedger()  # a replaced ledger (the endpoint came back)
            elif change < 0.48:
                batch.forget(name)
            elif change < 0.6:
                _teach(rng, learner, name)
            elif change < 0.61:
                learner.remove(name)  # the endpoint left and came back: its learning starts over
        if rng.random() < 0.5:  # the same candidates again (rows kept as arrays), else any subset, any order
            picked = rng.sample(range(len(names)), rng.randrange(1, len(names) + 1))
        _assert_equal(batch, [states[i] for i in picked], [ledgers[i] for i in picked], rng)


def _random_ledger_walks(rng: random.Random) -> Iterator[EndpointLedger]:
    """200 fresh ledgers, each yielded after every one of 10 random moves."""
    serial = [0]
    for _ in range(200):
        ledger = EndpointLedger()
        for _ in range(10):
            _move(rng, ledger, serial)
            yield ledger


def test_a_ledgers_oldest_never_exceeds_a_routing_time_it_holds() -> None:
    """``expire`` skips its walk while the cut-off is not past ``oldest``: exact only if ``oldest`` is a
    lower bound of every request held, whatever the order of events."""
    for ledger in _random_ledger_walks(random.Random(3)):
        held = [f.routed_at for f in (*ledger.pending.values(), *ledger.decoding.values())]
        assert ledger.oldest <= min(held, default=math.inf)


def test_queued_by_binary_search_equals_counting_back_from_the_newest() -> None:
    rng = random.Random(4)
    for ledger in _random_ledger_walks(rng):
        for now in (NOW - 5, NOW, NOW + rng.uniform(0, 10), math.inf):
            walked = 0
            for flight in reversed(ledger.pending.values()):  # the definition, newest first
                if flight.eta <= now:
                    break
                walked += 1
            assert ledger.queued(now) == walked
