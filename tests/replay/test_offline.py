"""The offline driver with real engine cores and real schedulers, on traces with known answers."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import pytest

from epp._util.clock import VirtualClock
from epp.datastore import EndpointState
from epp.engine.config import EngineConfig
from epp.replay.offline import ClusterSpec, OfflineReplay
from epp.replay.policies import known_policies, resolve
from epp.replay.summary import hit_ratio, imbalance, summarize
from epp.replay.traces import SegmentPrompt, TraceRequest
from epp.request import LLMRequest
from epp.scheduling import CycleState, SchedulerProfile
from epp.plugin.typed_name import TypedName
from epp.scheduling.plugins.pickers.max_score import MaxScorePicker
from epp.scheduling.plugins.profiles.single import SingleProfileHandler
from epp.scheduling.profile import WeightedScorer
from epp.scheduling.scheduler import Scheduler


def replay(requests: list[TraceRequest], policy: str, cluster: ClusterSpec) -> OfflineReplay:
    clock = VirtualClock()
    return OfflineReplay(requests, [resolve(policy).build(clock, 0)], cluster, clock)


def unique_trace(n: int, length: int = 256, gap: float = 0.05) -> list[TraceRequest]:
    return [TraceRequest(i * gap, SegmentPrompt(((1_000_000 + i * length, length),)), 8) for i in range(n)]


@pytest.mark.parametrize("policy", known_policies())
def test_all_unique_prompts_never_hit(policy: str) -> None:
    run = replay(unique_trace(40), policy, ClusterSpec(engines=4)).run()
    assert all(r.finish is not None for r in run.records)
    assert hit_ratio(run.records) == 0


def test_an_arrival_a_float_floor_puts_before_its_poll_tick_is_replayed() -> None:
    """53.9 / 0.05 floors to 1078 polls, and 1078 × 0.05 is 53.900000000000006: the poll for a request
    arriving at 53.9 must not move the virtual clock past it."""
    trace = [TraceRequest(0.0, SegmentPrompt(((0, 64),)), 2), TraceRequest(53.9, SegmentPrompt(((64, 64),)), 2)]
    run = replay(trace, "gie-default", ClusterSpec(engines=1)).run()
    assert all(r.finish is not None for r in run.records)


def test_one_repeated_prompt_hits_all_but_the_first_time() -> None:
    n, length = 30, 1024
    trace = [TraceRequest(float(i), SegmentPrompt(((0, length),)), 4) for i in range(n)]
    run = replay(trace, "default", ClusterSpec(engines=1)).run()
    # the engine recomputes the last block of a fully cached prompt, as vLLM does
    assert hit_ratio(run.records) == pytest.approx((n - 1) / n * (length - 16) / length)
    assert [r.cached_tokens for r in run.records] == [0] + [length - 16] * (n - 1)


def test_latencies_and_counters() -> None:
    trace = unique_trace(20, gap=1.0)  # one request at a time: no queueing
    driver = replay(trace, "default", ClusterSpec(engines=2))
    run = driver.run()
    for r in run.records:
        assert r.first_token is not None and r.finish is not None
        assert 0 < r.first_token - r.arrival < 0.1  # a 256-token prefill on an idle H100
        assert r.finish > r.first_token and r.output_tokens == 8
    assert all(s.inflight_requests == 0 and s.inflight_tokens == 0 for s in driver.datastores[0].endpoints())
    assert run.load and all(len(s.per_engine) == 2 for s in run.load)


def test_requests_an_engine_cannot_hold_are_shed_not_fatal() -> None:
    engine = EngineConfig(num_gpu_blocks=64)  # 1,008 usable tokens
    trace = unique_trace(3) + [TraceRequest(1.0, SegmentPrompt(((0, 5000),)), 4)]
    run = replay(trace, "default", ClusterSpec(engines=1, engine=engine)).run()
    assert run.records[-1].shed is not None and "max_model_len" in run.records[-1].shed
    assert all(r.finish is not None for r in run.records[:3])
    summary = summarize(run, "default", 1.0, 0.0, 0.0)
    assert summary["shed"] == summary["shed_too_long"] == 1  # the engine's refusal, not the scheduler's


class Outcomes:
    """A ResponseComplete/ResponseFailed plugin that records how each request ended."""

    typed_name = TypedName("outcomes", "outcomes")

    def __init__(self) -> None:
        self.completed: list[str] = []
        self.failed: list[tuple[str, str]] = []

    def response_complete(self, request: LLMRequest, endpoint: EndpointState, usage: Mapping[str, int]) -> None:
        self.completed.append(request.request_id)

    def response_failed(self, request: LLMRequest, endpoint: EndpointState, reason: str) -> None:
        self.failed.append((request.request_id, reason))


def test_an_engine_refusal_reaches_the_plugins_as_a_failure_not_a_completion() -> None:
    """``epp sim`` answers a request its engine refuses with 400: replay tells the director the same, so
    no plugin learns a fast completion from it, and the endpoint is not blamed (a 4xx is the request's fault)."""
    outcomes = Outcomes()
    profile = SchedulerProfile("p", MaxScorePicker(), scorers=[WeightedScorer(SeenMetrics())])
    scheduler = Scheduler({"p": profile}, SingleProfileHandler(), plugins=[outcomes])
    trace = unique_trace(3) + [TraceRequest(1.0, SegmentPrompt(((0, 5000),)), 4)]
    clock = VirtualClock()
    driver = OfflineReplay(trace, [scheduler], ClusterSpec(engines=1, engine=EngineConfig(num_gpu_blocks=64)), clock)
    run = driver.run()
    assert run.records[-1].shed is not None
    assert outcomes.completed == ["0", "1", "2"] and outcomes.failed == [("3", "http-400")]
    (state,) = driver.datastores[0].endpoints()
    assert state.inflight_requests == 0 and state.health.failures == 0


class SeenMetrics:
    """A scorer that records the engine metrics snapshot the scheduler saw at each request."""

    typed_name = TypedName("seen-metrics", "seen-metrics")

    def __init__(self) -> None:
        self.seen: list[tuple[float, int]] = []

    def score(self, cycle: CycleState, request: LLMRequest, endpoints: list[EndpointState]) -> Sequence[float]:
        m = endpoints[0].metrics
        assert m is not None and not endpoints[0].stale
        self.seen.append((m.scraped_at, m.running + m.waiting))
        return [1.0] * len(endpoints)


def test_scheduler_sees_metrics_as_stale_as_the_poller_makes_them() -> None:
    recorder = SeenMetrics()
    profile = SchedulerProfile("p", MaxScorePicker(), scorers=[WeightedScorer(recorder)])
    scheduler = Scheduler({"p": profile}, SingleProfileHandler())
    # long prompts (~0.3 s prefill each); arrivals inside and after the first 50 ms poll interval
    trace = [TraceRequest(t, SegmentPrompt(((i * 10_000, 8192),)), 2) for i, t in enumerate([0.0, 0.01, 0.07, 0.12])]
    OfflineReplay(trace, [scheduler], ClusterSpec(engines=1), VirtualClock()).run()
    assert [at for at, _ in recorder.seen] == pytest.approx([0.0, 0.0, 0.05, 0.10])
    # at 0.01 the first request is running, but the last scrape (t=0) predates it
    assert [load for _, load in recorder.seen] == [0, 0, 2, 3]


def test_round_robin_spreads_evenly() -> None:
    run = replay(unique_trace(40, gap=0.01), "round-robin", ClusterSpec(engines=4)).run()
    assert [sum(1 for r in run.records if r.engine == e) for e in range(4)] == [10, 10, 10, 10]
    assert run.dispatched == (10, 10, 10, 10) and imbalance(run.dispatched) == 1.0


def test_same_seed_same_run() -> None:
    trace = unique_trace(30, gap=0.01)

    def picks(seed: int) -> list[int]:
        clock = VirtualClock()
        driver = OfflineReplay(trace, [resolve("random").build(clock, seed)], ClusterSpec(engines=4), clock)
        return [r.engine for r in driver.run().records]

    assert picks(1) == picks(1)
    assert picks(1) != picks(2)


def test_cache_aware_policy_keeps_a_shared_prefix_on_one_engine() -> None:
    """The prefix scorer sees the same token ids the engines hash: groups stick to their engine."""
    prompts = [SegmentPrompt(((g * 100_000, 2048), (10_000_000 + i * 64, 64))) for i, g in enumerate([0, 1, 2, 3] * 8)]
    trace = [TraceRequest(i * 0.5, p, 4) for i, p in enumerate(prompts)]
    run = replay(trace, "gie-default", ClusterSpec(engines=4)).run()
    engines_per_group = [{r.engine for r in run.records[g::4]} for g in range(4)]
    assert all(len(e) == 1 for e in engines_per_group)
    assert hit_ratio(run.records) == pytest.approx(28 * 2048 / (32 * 2112), rel=0.01)


def test_overload_sheds_only_sheddable_requests_as_serve_does() -> None:
    """Issue #17: replay runs serve's admission — when the pool is saturated, priority −1 requests get
    serve's 429 and nothing else is refused; by_priority counts it per band."""
    trace = [TraceRequest(i * 0.002, SegmentPrompt(((i * 10_000, 2048),)), 64, priority=-(i % 2)) for i in range(400)]
    driver = replay(trace, "gie-default", ClusterSpec(engines=2))
    run = driver.run()
    shed = [r for r in run.records if r.shed is not None]
    assert shed and all(r.priority == -1 and r.shed == "saturated" for r in shed)
    assert all(r.finish is not None for r in run.records if r.priority == 0)
    bands = summarize(run, "gie-default", 1.0, 0.0, 0.0)["by_priority"]
    assert list(bands) == ["0", "-1"]
    assert bands["0"]["requests"] == bands["0"]["completed"] == 200 and bands["0"]["shed"] == 0
    assert bands["-1"]["shed"] == len(shed) and bands["-1"]["completed"] == 200 - len(shed)
    assert bands["0"]["ttft_p50"] <= bands["0"]["ttft_p90"]
    assert driver.recorders[0].rejected == {(-1, "saturated"): len(shed)}  # the director recorded each refusal
    assert all(s.inflight_requests == 0 for s in driver.datastores[0].endpoints())
