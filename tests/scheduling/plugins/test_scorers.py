"""Scorers on crafted endpoint states: one table per scorer, stale metrics always neutral."""

from __future__ import annotations

import base64

import pytest

from epp.datastore import EndpointMetrics, EndpointState
from epp.scheduling.framework import CycleState
from epp.scheduling.plugins.scorers.active_request import ActiveRequestScorer
from epp.scheduling.plugins.scorers.kv_cache import KVCacheUtilizationScorer
from epp.scheduling.plugins.scorers.load_aware import LoadAwareScorer
from epp.scheduling.plugins.scorers.lora_affinity import LoraAffinityScorer
from epp.scheduling.plugins.scorers.queue import QueueScorer
from epp.scheduling.plugins.scorers.running_requests import RunningRequestsScorer
from epp.scheduling.plugins.scorers.session_affinity import SessionAffinityScorer, session_token
from epp.scheduling.plugins.scorers.token_load import TokenLoadScorer
from tests.conftest import make_request, make_state


def fresh(**kw: object) -> EndpointMetrics:
    return EndpointMetrics(scraped_at=0.0, **kw)  # type: ignore[arg-type]


def states(*metrics: EndpointMetrics | None, stale: tuple[int, ...] = ()) -> list[EndpointState]:
    out = [make_state(f"e{i}", address=f"10.0.0.{i + 1}", metrics=m) for i, m in enumerate(metrics)]
    for i in stale:
        out[i].stale = True
    return out


def run(scorer: object, endpoints: list[EndpointState], **request: object) -> list[float]:
    return list(scorer.score(CycleState(), make_request(**request), endpoints))  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("waiting", "stale", "expected"),
    [
        ([0, 5, 10], (), [1.0, 0.5, 0.0]),
        ([3, 3, 3], (), [1.0, 1.0, 1.0]),
        ([2, 100, 6], (1,), [1.0, 0.5, 0.0]),  # stale endpoint: neutral and outside min/max
        ([7], (0,), [0.5]),
    ],
)
def test_queue_scorer_normalises_over_candidates(waiting: list[int], stale: tuple[int, ...], expected: list[float]) -> None:
    assert run(QueueScorer(), states(*(fresh(waiting=w) for w in waiting), stale=stale)) == pytest.approx(expected)


def test_queue_scorer_without_metrics_is_neutral() -> None:
    assert run(QueueScorer(), states(None, fresh(waiting=1), fresh(waiting=3))) == pytest.approx([0.5, 1.0, 0.0])


def test_running_requests_scorer_uses_running_not_waiting() -> None:
    endpoints = states(fresh(running=10, waiting=0), fresh(running=0, waiting=50), fresh(running=5))
    assert run(RunningRequestsScorer(), endpoints) == pytest.approx([0.0, 1.0, 0.5])


def test_kv_cache_scorer_is_one_minus_usage() -> None:
    endpoints = states(fresh(kv_usage=0.0), fresh(kv_usage=0.25), fresh(kv_usage=1.0), fresh(kv_usage=0.9), stale=(3,))
    assert run(KVCacheUtilizationScorer(), endpoints) == pytest.approx([1.0, 0.75, 0.0, 0.5])


@pytest.mark.parametrize(("waiting", "expected"), [(0, 0.5), (64, 0.25), (128, 0.0), (500, 0.0), (1, 0.5 * (1 - 1 / 128))])
def test_load_aware_scorer(waiting: int, expected: float) -> None:
    assert run(LoadAwareScorer(), states(fresh(waiting=waiting))) == pytest.approx([expected])


def test_load_aware_threshold_parameter() -> None:
    assert run(LoadAwareScorer(threshold=10), states(fresh(waiting=5))) == pytest.approx([0.25])


@pytest.mark.parametrize(
    ("metrics", "expected"),
    [
        (fresh(active_loras=frozenset({"a"}), max_lora=1), 1.0),
        (fresh(active_loras=frozenset({"b"}), max_lora=2), 0.8),
        (fresh(active_loras=frozenset({"b"}), waiting_loras=frozenset({"a"}), max_lora=2), 0.6),
        (fresh(active_loras=frozenset({"b"}), max_lora=1), 0.0),
        (fresh(), 0.5),  # no LoRA family reported
    ],
)
def test_lora_affinity_scorer(metrics: EndpointMetrics, expected: float) -> None:
    assert run(LoraAffinityScorer(), states(metrics), model="a") == pytest.approx([expected])


def test_lora_affinity_stale_is_neutral() -> None:
    assert run(LoraAffinityScorer(), states(fresh(active_loras=frozenset({"a"}), max_lora=1), stale=(0,)), model="a") == [0.5]


def test_token_load_scorer_uses_inflight_tokens() -> None:
    endpoints = states(None, None, None)
    for state, tokens in zip(endpoints, (0, 1_048_576, 10_000_000)):
        state.inflight_tokens = tokens
    assert run(TokenLoadScorer(), endpoints) == pytest.approx([1.0, 0.75, 0.0])


@pytest.mark.parametrize(
    ("inflight", "idle", "busy", "expected"),
    [([0, 0], 0, 1.0, [1.0, 1.0]), ([0, 2, 4], 0, 1.0, [1.0, 0.5, 0.0]), ([1, 4], 1, 0.5, [1.0, 0.0]), ([2, 4], 0, 0.5, [0.25, 0.0])],
)
def test_active_request_scorer(inflight: list[int], idle: int, busy: float, expected: list[float]) -> None:
    endpoints = [make_state(f"e{i}", inflight=c) for i, c in enumerate(inflight)]
    assert run(ActiveRequestScorer(idle_threshold=idle, max_busy_score=busy), endpoints) == pytest.approx(expected)


def test_session_affinity_follows_the_token_and_sets_it_on_the_response() -> None:
    endpoints = states(None, None, None)
    scorer = SessionAffinityScorer()
    token = session_token(endpoints[1])
    assert base64.b64decode(token) == b"/e1"
    assert run(scorer, endpoints, session_token=token) == [0.0, 1.0, 0.0]
    assert run(scorer, endpoints, headers={"x-session-token": token}) == [0.0, 1.0, 0.0]
    assert run(scorer, endpoints) == [0.0, 0.0, 0.0]
    assert run(scorer, endpoints, session_token="!!not base64") == [0.0, 0.0, 0.0]
    assert scorer.response_headers(make_request(), endpoints[2]) == {"x-session-token": session_token(endpoints[2])}
