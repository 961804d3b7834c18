"""The TTFT predictor on crafted endpoint states, with the learner's generic prior (nothing learned
yet): cache hits, queues, decode load, KV pressure, foreign load and stale metrics. How close the
learned latency gets to an engine is in ``test_learn.py``."""

from __future__ import annotations

import pytest

from epp.datastore import EndpointMetrics, EndpointState
from epp.scheduling.ttft import EndpointLedger, Flight, LatencyLearner, TTFTPredictor
from epp.scheduling.ttft.learn import PRIOR_PREFILL
from epp.scheduling.ttft.predictor import SURVIVAL_EDGE
from tests.conftest import make_state

NOW = 100.0
CAPACITY = 467_232


def predictor() -> TTFTPredictor:
    return TTFTPredictor(LatencyLearner(8192), block_size=16, default_output_tokens=256, kv_capacity_tokens=CAPACITY)


def fresh(running: int = 0, waiting: int = 0, kv: float = 0.0) -> EndpointState:
    m = EndpointMetrics(scraped_at=NOW - 0.01, running=running, waiting=waiting, kv_usage=kv, block_size=16,
                        num_gpu_blocks=CAPACITY // 16)
    return make_state("e", metrics=m)


def booked(*prefills: float) -> EndpointLedger:
    """A ledger with requests routed just now whose predicted prefills are ``prefills``."""
    ledger = EndpointLedger()
    for i, p in enumerate(prefills):
        ledger.routed(f"q{i}", Flight(NOW, p, p, 4000, 100))
    return ledger


@pytest.mark.parametrize(("prompt", "cached"), [(300, 0), (9000, 0), (20000, 0), (20000, 16384), (9000, 8000)])
def test_an_idle_endpoint_costs_its_prefill_alone(prompt: int, cached: int) -> None:
    per_step, per_token, per_pair = PRIOR_PREFILL
    new = prompt - cached
    steps = -(-new // 8192)
    expected = per_step * steps + per_token * new / 1000 + per_pair * new * (cached + new / 2) / 1e6
    p = predictor().predict(fresh(), EndpointLedger(), prompt, cached, None, NOW)
    assert p.cached_tokens == cached and p.wait == 0.0 and p.kv_wait == 0.0
    assert p.ttft == pytest.approx(expected, rel=1e-9)


# name: (A's state, seconds of prefill queued on A, A's cached tokens, the same for B, prompt, winner)
CASES = {
    "warm beats cold when both are idle": (fresh(), 0.0, 10000, fresh(), 0.0, 0, 12000, "A"),
    "a hot endpoint keeps a request while its queue is shorter than the saving": (
        fresh(), 0.1, 10000, fresh(), 0.0, 0, 12000, "A"),
    "a hot endpoint loses once its queue exceeds the prefill it saves": (
        fresh(), 1.0, 10000, fresh(), 0.0, 0, 12000, "B"),
    "the shorter queue wins between cold endpoints": (fresh(), 0.3, 0, fresh(), 0.2, 0, 4000, "B"),
    "decode load slows a prefill": (fresh(running=120, kv=0.8), 0.0, 0, fresh(running=2, kv=0.05), 0.0, 0, 8000, "B"),
    "an endpoint whose KV cannot take the prompt waits for space": (
        fresh(running=30, kv=0.99), 0.0, 0, fresh(running=30, kv=0.5), 0.0, 0, 30000, "B"),
    "requests queued by someone else count": (fresh(waiting=3), 0.0, 0, fresh(), 0.0, 0, 4000, "B"),
}


@pytest.mark.parametrize("name", list(CASES))
def test_who_wins(name: str) -> None:
    a, queue_a, cached_a, b, queue_b, cached_b, prompt, winner = CASES[name]
    pa = predictor().predict(a, booked(queue_a) if queue_a else EndpointLedger(), prompt, cached_a, None, NOW)
    pb = predictor().predict(b, booked(queue_b) if queue_b else EndpointLedger(), prompt, cached_b, None, NOW)
    assert (pa.ttft < pb.ttft) == (winner == "A"), (pa, pb)


def test_the_queue_threshold_is_the_saved_prefill() -> None:
    p = predictor()
    warm = p.predict(fresh(), EndpointLedger(), 12000, 10000, None, NOW)
    cold = p.predict(fresh(), EndpointLedger(), 12000, 0, None, NOW)
    saved = cold.prefill - warm.prefill
    assert saved > 0.2  # 10K cached tokens of a 12K prompt, at the prior's 25 ms per 1K tokens
    just_below = p.predict(fresh(), booked(saved * 0.9), 12000, 10000, None, NOW)
    just_above = p.predict(fresh(), booked(saved * 1.1), 12000, 10000, None, NOW)
    assert just_below.ttft < cold.ttft < just_above.ttft


def test_the_kv_wait_only_appears_near_full() -> None:
    p = predictor()
    assert p.predict(fresh(running=30, kv=0.5), EndpointLedger(), 30000, 0, None, NOW).kv_wait == 0.0
    assert p.predict(fresh(running=30, kv=0.99), EndpointLedger(), 30000, 0, None, NOW).kv_wait > 0.0


@pytest.mark.parametrize(
    ("written_since", "kv", "expected_share"),
    [
        (None, 0.9, 1.0),  # no mark: trust the index
        (0, 0.99, 1.0),  # held by a request in flight (or nothing written since): resident
        (int(CAPACITY * (SURVIVAL_EDGE - 1)), 0.0, 1.0),
        (int(CAPACITY * 0.5 * (SURVIVAL_EDGE - 0.25)), 0.5, 0.25),  # r = EDGE − 0.25 of the free half
        (int(CAPACITY * SURVIVAL_EDGE), 0.0, 0.0),
    ],
)
def test_a_released_prefix_is_discounted_as_writes_fill_the_free_kv(
    written_since: int | None, kv: float, expected_share: float
) -> None:
    p = predictor().predict(fresh(kv=kv), EndpointLedger(), 20016, 20000, written_since, NOW)
    assert p.cached_tokens == pytest.approx(20000 * expected_share, abs=16)


def test_stale_metrics_are_neutral() -> None:
    """Old numbers (a huge queue, a full cache) neither repel nor attract: the endpoint is predicted from
    epp's own bookkeeping, like one never scraped."""
    stale = fresh(running=200, waiting=50, kv=1.0)
    stale.stale = True
    unscraped = make_state("u")
    p = predictor()
    for ledger in (EndpointLedger(), booked(0.4)):
        assert p.predict(stale, ledger, 5000, 0, None, NOW) == p.predict(unscraped, ledger, 5000, 0, None, NOW)
    assert p.predict(stale, EndpointLedger(), 5000, 0, None, NOW).ttft == pytest.approx(
        p.predict(fresh(), EndpointLedger(), 5000, 0, None, NOW).ttft
    )


def test_requests_routed_since_the_scrape_count_as_load() -> None:
    p = predictor()
    ledger = EndpointLedger()
    ledger.routed("new", Flight(NOW - 0.001, 0.2, 0.2, 30000, 100))  # after the scrape at NOW - 0.01
    load = p.decode_load(fresh(running=1, kv=0.1), ledger)
    assert load.sequences == 2 and load.context_tokens == int(0.1 * CAPACITY) + 30000
    assert load.foreign_waiting == 0
