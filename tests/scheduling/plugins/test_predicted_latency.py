"""llm-d's predicted-latency chain on epp's predictor: configs load with upstream's parameter names, the
scorer, tier filter and admitter follow upstream's documented rules, and the producer's predictions
follow load."""

from __future__ import annotations

import random

import pytest

from epp._util.clock import VirtualClock
from epp.config import load_scheduler_text
from epp.config.decode import ConfigError
from epp.datastore import EndpointMetrics, EndpointState
from epp.request import LLMRequest, RequestKind
from epp.scheduling.framework import CycleState
from epp.scheduling.plugins.predicted_latency import (
    TPOT_SLO_HEADER,
    TTFT_SLO_HEADER,
    LatencyPrediction,
    LatencyScorer,
    LatencySLOAdmitter,
    PredictedLatencyProducer,
    PredictedLatencyScorer,
    SLOHeadroomTierFilter,
    headroom_scores,
)
from epp.scheduling.scheduler import Scheduler
from tests.conftest import make_state

HEADER = "apiVersion: llm-d.ai/v1alpha1\nkind: EndpointPickerConfig\n"
CHAIN = HEADER + """\
plugins:
- {type: predicted-latency-producer, parameters: {sloBufferFactor: 1.0, contextTTL: 5m, streamingMode: true}}
- {type: slo-headroom-tier-filter, parameters: {epsilonExploreNeg: 0.0}}
- {type: latency-scorer, parameters: {ttftWeight: 0.8, tpotWeight: 0.2, headroomSelectionStrategy: least}}
- {type: latency-slo-admitter}
- {type: max-score-picker}
schedulingProfiles:
- name: default
  plugins:
  - {pluginRef: slo-headroom-tier-filter}
  - {pluginRef: latency-scorer}
  - {pluginRef: max-score-picker}
"""


def build(text: str = CHAIN) -> tuple[Scheduler, VirtualClock]:
    clock = VirtualClock(10.0)
    return load_scheduler_text(text, clock=clock, rng=random.Random(0)), clock


def plugin(scheduler: Scheduler, kind: type) -> object:
    return next(p for p in scheduler.plugins if isinstance(p, kind))


def pool(clock: VirtualClock, n: int = 2, kv: float = 0.3) -> list[EndpointState]:
    return [make_state(f"e{i}", address=f"10.0.0.{i + 1}", metrics=EndpointMetrics(
        scraped_at=clock.now(), kv_usage=kv, block_size=16, num_gpu_blocks=29202)) for i in range(n)]


def request(rid: str, tokens: int = 4000, priority: int = 0, **headers: str) -> LLMRequest:
    return LLMRequest(request_id=rid, kind=RequestKind.COMPLETIONS, model="m", prompt_token_ids=list(range(rid.__hash__() % 1000, rid.__hash__() % 1000 + tokens)),
                      max_tokens=64, stream=True, priority=priority, headers=headers)


def prediction(ttft_h: float, tpot_h: float, dispatched: int = 1, prefix: float = 0.0) -> LatencyPrediction:
    return LatencyPrediction(100.0, 10.0, ttft_h, tpot_h, dispatched, prefix)


def test_the_chain_loads_with_upstream_names_and_shares_one_producer() -> None:
    scheduler, _ = build()
    producer = plugin(scheduler, PredictedLatencyProducer)
    assert plugin(scheduler, LatencyScorer).producer is producer  # type: ignore[attr-defined]
    assert plugin(scheduler, SLOHeadroomTierFilter).producer is producer  # type: ignore[attr-defined]
    assert plugin(scheduler, LatencySLOAdmitter).producer is producer  # type: ignore[attr-defined]
    assert producer in scheduler.pre_request_plugins and producer in scheduler.response_complete_plugins


@pytest.mark.parametrize(("params", "path"), [
    ("{sloBufferFactor: 0}", "sloBufferFactor"),
    ("{contextTTL: banana}", "contextTTL"),
    ("{noSuchKey: 1}", "noSuchKey"),
])
def test_bad_producer_parameters_name_their_field(params: str, path: str) -> None:
    text = HEADER + f"plugins:\n- {{type: predicted-latency-producer, parameters: {params}}}\n- {{type: max-score-picker}}\n"
    with pytest.raises(ConfigError, match=path):
        build(text)


def test_without_slo_the_lowest_predicted_latency_wins_and_busy_endpoints_lose() -> None:
    scheduler, clock = build()
    endpoints = pool(clock)
    first = scheduler.schedule(request("a", 12000), endpoints).endpoints[0]  # a long prefill booked there
    busy = first.name
    for i in range(6):  # with e.g. one busy endpoint, the rest go elsewhere until it drains
        picked = scheduler.schedule(request(f"b{i}", 300), endpoints).endpoints[0]
        if i == 0:
            assert picked.name != busy
    producer = plugin(scheduler, PredictedLatencyProducer)
    ttft = producer.predicted_ttft_ms(CycleState(), request("c", 300), endpoints)  # type: ignore[attr-defined]
    by_name = dict(zip([e.name for e in endpoints], ttft))
    assert by_name[busy] > max(v for k, v in by_name.items() if k != busy)


def test_headroom_scores_follow_upstreams_rules() -> None:
    # positive and negative present: only the positive tier scores
    s = headroom_scores([prediction(50, 5), prediction(-10, 5), prediction(10, 1)], 0.8, 0.2, "least")
    assert s[1] == 0.0 and s[2] > s[0]  # least: closest to the SLO wins
    s = headroom_scores([prediction(50, 5), prediction(-10, 5), prediction(10, 1)], 0.8, 0.2, "most")
    assert s[0] > s[2] and s[1] == 0.0
    # all negative: idle endpoints first
    s = headroom_scores([prediction(-10, -1, dispatched=2), prediction(-500, -50, dispatched=0)], 0.8, 0.2, "most")
    assert s == [0.0, 1.0]
    # all negative and busy: only-TPOT-violated beats only-TTFT beats both; within, the smallest deficit
    s = headroom_scores([prediction(-5, -5), prediction(5, -50), prediction(-1, 5)], 0.8, 0.2, "least")
    assert s[1] == 1.0 and s[0] == s[2] == 0.0
    s = headroom_scores([prediction(-100, -5), prediction(-10, -5)], 0.8, 0.2, "least")
    assert s[1] > s[0]


def test_the_tier_filter_keeps_the_endpoints_that_meet_the_slo() -> None:
    scheduler, clock = build()
    endpoints = pool(clock, 3)
    scheduler.schedule(request("long", 16000), [endpoints[0]])  # e0 gets a long prefill queued
    flt = plugin(scheduler, SLOHeadroomTierFilter)
    producer = plugin(scheduler, PredictedLatencyProducer)
    ask = request("q", 2000, **{TTFT_SLO_HEADER: "0"})
    ttft = producer.predicted_ttft_ms(CycleState(), ask, endpoints)  # type: ignore[attr-defined]
    slo = (ttft[0] + max(ttft[1:])) / 2  # between the busy endpoint and the idle ones
    ask = request("q", 2000, **{TTFT_SLO_HEADER: f"{slo}", TPOT_SLO_HEADER: "1000"})
    kept = flt.filter(CycleState(), ask, endpoints)  # type: ignore[attr-defined]
    assert [e.name for e in kept] == ["e1", "e2"]
    flt.params = type(flt.params)(epsilon_explore_neg=1.0)  # type: ignore[attr-defined]
    assert [e.name for e in flt.filter(CycleState(), ask, endpoints)] == ["e0"]  # type: ignore[attr-defined]


def test_the_admitter_sheds_only_sheddable_requests_no_endpoint_can_serve_in_time() -> None:
    scheduler, clock = build()
    endpoints = pool(clock, 2)
    for e in endpoints:
        scheduler.schedule(request(f"load-{e.name}", 16000), [e])  # both busy, neither cold (KV 30 %)
    admitter = plugin(scheduler, LatencySLOAdmitter)
    tight = {TTFT_SLO_HEADER: "1", TPOT_SLO_HEADER: "1000"}
    assert admitter.admit(request("s", 4000, priority=-1, **tight), endpoints)  # type: ignore[attr-defined]
    assert admitter.admit(request("p", 4000, priority=0, **tight), endpoints) is None  # type: ignore[attr-defined]
    assert admitter.admit(request("n", 4000, priority=-1), endpoints) is None  # type: ignore[attr-defined]
    loose = {TTFT_SLO_HEADER: "600000", TPOT_SLO_HEADER: "1000"}
    assert admitter.admit(request("l", 4000, priority=-1, **loose), endpoints) is None  # type: ignore[attr-defined]
    cold = pool(clock, 1, kv=0.01)
    assert admitter.admit(request("c", 4000, priority=-1, **tight), endpoints + cold) is None  # type: ignore[attr-defined]


def test_training_only_mode_scores_from_the_composite_fallback() -> None:
    scheduler, clock = build(CHAIN.replace("streamingMode: true", "predictInProduce: false"))
    endpoints = pool(clock, 2)
    endpoints[1].metrics = EndpointMetrics(scraped_at=clock.now(), kv_usage=0.9, waiting=4, block_size=16, num_gpu_blocks=29202)
    scorer = plugin(scheduler, LatencyScorer)
    scores = scorer.score(CycleState(), request("x"), endpoints)  # type: ignore[attr-defined]
    assert scores[0] > scores[1]


def test_the_earlier_single_plugin_loads_with_its_parameters() -> None:
    text = HEADER + """\
plugins:
- type: predicted-latency-scorer
  parameters: {samplingMean: 100, maxSampledTokens: 20, sloBufferFactor: 0.9, headroomSelectionStrategy: most,
               epsilonExploreSticky: 0.0, epsilonExploreNeg: 0.0, affinityGateTau: 0.8, affinityGateTauGlobal: 0.99,
               negHeadroomTTFTWeight: 0.8, negHeadroomTPOTWeight: 0.2, headroomTTFTWeight: 0.8, headroomTPOTWeight: 0.2,
               selectionMode: linear, streamingMode: true, contextTTL: 1m}
- {type: max-score-picker}
schedulingProfiles:
- name: default
  plugins:
  - {pluginRef: predicted-latency-scorer}
  - {pluginRef: max-score-picker}
"""
    scheduler, clock = build(text)
    scorer = plugin(scheduler, PredictedLatencyScorer)
    assert scorer.producer.params.slo_buffer_factor == 0.9  # type: ignore[attr-defined]
    assert scheduler.schedule(request("r"), pool(clock, 3)).endpoints
