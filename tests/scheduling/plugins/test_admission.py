"""concurrency-detector and probabilistic-admitter: the upstream saturation and shedding formulas, and
both on the director's real admission path (429 for the refused, nothing for the protected)."""

from __future__ import annotations

import random

import pytest

from epp.config import ConfigError, load_scheduler_text
from epp.datastore import EndpointMetrics, EndpointState
from epp.director import Director, ShedSheddable
from epp.request import RequestError
from epp.scheduling.framework import CycleState
from epp.scheduling.plugins.admission.concurrency_detector import ConcurrencyDetector, ConcurrencyParams
from epp.scheduling.plugins.admission.probabilistic_admitter import (
    AdmitterParams,
    ProbabilisticAdmitter,
    pool_saturation,
    rejection_probability,
)
from epp.telemetry import Telemetry
from tests.conftest import make_request, make_state
from tests.test_director import chat, make_store

HEAD = "apiVersion: llm-d.ai/v1alpha1\nkind: EndpointPickerConfig\nplugins:\n"


def loaded(*loads: tuple[int, int]) -> list[EndpointState]:
    eps = [make_state(f"e{i}", address=f"10.0.0.{i + 1}") for i in range(len(loads))]
    for e, (requests, tokens) in zip(eps, loads):
        e.inflight_requests, e.inflight_tokens = requests, tokens
    return eps


@pytest.mark.parametrize(("mode", "expected"), [("requests", 0.5), ("tokens", 0.25), ("hybrid", 0.5)])
def test_concurrency_saturation_is_aggregate_load_over_aggregate_capacity(mode: str, expected: float) -> None:
    d = ConcurrencyDetector(params=ConcurrencyParams(concurrency_mode=mode, max_concurrency=10, max_token_concurrency=1000))
    eps = loaded((10, 500), (0, 0))  # one full endpoint, one idle
    assert d.saturation(eps) == pytest.approx(expected)
    assert not d.is_saturated(eps)
    assert d.saturation([]) == 1.0 and d.is_saturated([])


def test_concurrency_filter_applies_headroom_per_endpoint() -> None:
    eps = loaded((9, 0), (10, 0), (11, 0), (12, 0))
    strict = ConcurrencyDetector(params=ConcurrencyParams(max_concurrency=10))
    assert [e.name for e in strict.filter(CycleState(), make_request(), eps)] == ["e0"]
    burst = ConcurrencyDetector(params=ConcurrencyParams(max_concurrency=10, headroom=0.2))
    assert [e.name for e in burst.filter(CycleState(), make_request(), eps)] == ["e0", "e1", "e2"]
    tokens = ConcurrencyDetector(params=ConcurrencyParams(concurrency_mode="hybrid", max_concurrency=10, max_token_concurrency=100))
    eps[0].inflight_tokens = 100
    assert [e.name for e in tokens.filter(CycleState(), make_request(), eps)] == []


def test_concurrency_detector_becomes_the_schedulers_saturation_detector() -> None:
    s = load_scheduler_text(HEAD + "- {type: concurrency-detector, parameters: {maxConcurrency: 132, concurrencyMode: requests}}\n"
                            "- {type: random-picker}\n")
    assert isinstance(s.saturation_detector, ConcurrencyDetector)
    with pytest.raises(ConfigError, match="concurrencyMode"):
        load_scheduler_text(HEAD + "- {type: concurrency-detector, parameters: {concurrencyMode: bytes}}\n")


def with_metrics(*metrics: EndpointMetrics | None) -> list[EndpointState]:
    eps = [make_state(f"e{i}", metrics=m) for i, m in enumerate(metrics)]
    return eps


def test_probabilistic_saturation_and_curve() -> None:
    eps = with_metrics(EndpointMetrics(0.0, waiting=1, kv_usage=0.4), EndpointMetrics(0.0, waiting=0, kv_usage=0.08), None)
    # max(1/5, 0.4/0.8)=0.5; max(0, 0.1)=0.1; no metrics=1.0
    assert pool_saturation(eps, 5, 0.8) == pytest.approx((0.5 + 0.1 + 1.0) / 3)
    assert rejection_probability(0.15, 5, 300) == pytest.approx(0.0228, abs=1e-3)  # README: ~2.3%
    assert rejection_probability(0.34, 5, 300) == 1.0


def test_probabilistic_admitter_sheds_only_sheddable_at_the_curves_rate() -> None:
    admitter = ProbabilisticAdmitter(params=AdmitterParams(), rng=random.Random(7))
    eps = with_metrics(EndpointMetrics(0.0, waiting=1))  # sat 0.2 → p = 0.2^5·300 = 9.6%
    sheddable = make_request(priority=-1)
    refused = sum(admitter.admit(sheddable, eps) is not None for _ in range(5000))
    assert 0.08 < refused / 5000 < 0.112
    assert all(admitter.admit(make_request(priority=0), eps) is None for _ in range(200))
    assert admitter.admit(sheddable, []) is None


def test_director_answers_429_from_an_admitter_and_admits_the_protected() -> None:
    store = make_store("10.0.0.1:8000")
    state = store.get("10.0.0.1:8000")
    assert state is not None
    store.update_metrics(state.name, EndpointMetrics(store.clock.now(), waiting=50))  # saturation 10 → p = 1
    scheduler = load_scheduler_text(HEAD + "- {type: probabilistic-admitter}\n- {type: random-picker}\n"
                                    "- {type: utilization-detector, parameters: {queueDepthThreshold: 999999999, kvCacheUtilThreshold: 1.0}}\n"
                                    "flowControl:\n  saturationDetector: {pluginRef: utilization-detector}\n",
                                    clock=store.clock, rng=random.Random(2))
    d = Director(store, scheduler, Telemetry(store), clock=store.clock, admission=ShedSheddable(scheduler.saturation_detector),
                 objective_priority={"batch": -1}.__getitem__)
    with pytest.raises(RequestError) as info:
        d.route(chat(headers={"x-llm-d-inference-objective": "batch"}), 10)
    assert info.value.status == 429 and "probabilistic-admitter" in str(info.value)
    assert d.route(chat(), 10).destination == "10.0.0.1:8000"
