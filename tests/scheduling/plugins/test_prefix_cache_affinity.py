"""prefix-cache-affinity-filter, inflight-load-producer and token-load-scorer: llm-d's "sticky until
saturated" default, checked against the upstream formulas on crafted prefix indexes and loads."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from epp.config import ConfigError, load_scheduler_text
from epp.datastore import EndpointState
from epp.request import LLMRequest
from epp.scheduling.framework import CycleState, ProfileResult, SchedulingResult
from epp.scheduling.plugins.filters.prefix_cache_affinity import AffinityParams, PrefixCacheAffinityFilter
from epp.scheduling.plugins.producers.inflight_load import InFlightLoad, InFlightLoadParams, InFlightLoadProducer
from epp.scheduling.plugins.scorers.token_load import TokenLoadScorer
from epp.config.presets import build_preset
from epp.scheduling.prefix.producer import ApproxPrefixCacheProducer
from tests.conftest import make_request, make_state

PROMPT = b"x" * 4096  # 1024 estimated tokens = 64 blocks of 16


def pool(n: int = 3) -> list[EndpointState]:
    return [make_state(f"e{i}", address=f"10.0.0.{i + 1}") for i in range(n)]


def warm(producer: ApproxPrefixCacheProducer, request: LLMRequest, endpoint: EndpointState, blocks: int | None = None) -> None:
    hashes = producer.info(CycleState(), request, [endpoint]).hashes
    producer.index.add(endpoint.name, hashes if blocks is None else hashes[:blocks])


def names(endpoints: list[EndpointState]) -> list[str]:
    return [e.name for e in endpoints]


def affinity(producer: ApproxPrefixCacheProducer, **params: object) -> PrefixCacheAffinityFilter:
    return PrefixCacheAffinityFilter(producer, params=AffinityParams(**params), rng=random.Random(1))  # type: ignore[arg-type]


def test_sticky_endpoints_at_or_above_threshold_are_kept_alone() -> None:
    producer = ApproxPrefixCacheProducer()
    eps = pool(3)
    req = make_request(prompt=PROMPT)
    warm(producer, req, eps[0])            # 64/64 = 1.0
    warm(producer, req, eps[1], blocks=52)  # 52/64 = 0.8125
    warm(producer, req, eps[2], blocks=50)  # 50/64 = 0.78 < 0.8
    kept = affinity(producer, max_ttft_penalty_ms=0).filter(CycleState(), req, eps)
    assert names(kept) == ["e0", "e1"]


def test_no_sticky_endpoint_keeps_all_and_threshold_zero_disables() -> None:
    producer = ApproxPrefixCacheProducer()
    eps = pool(3)
    req = make_request(prompt=PROMPT)
    assert affinity(producer).filter(CycleState(), req, eps) == eps
    warm(producer, req, eps[0])
    assert affinity(producer, affinity_threshold=0.0).filter(CycleState(), req, eps) == eps


def test_ttft_gate_breaks_stickiness_when_sticky_is_slower_by_more_than_the_penalty() -> None:
    producer = ApproxPrefixCacheProducer()
    eps = pool(2)
    req = make_request(prompt=PROMPT)
    warm(producer, req, eps[0])
    # TTFT = in-flight tokens / 1000 tok/s: sticky 3000 ms, other 0 ms.
    eps[0].inflight_tokens = 3000
    gate = dict(peak_prefill_throughput=1000.0)
    assert names(affinity(producer, max_ttft_penalty_ms=2999, **gate).filter(CycleState(), req, eps)) == ["e0", "e1"]
    assert names(affinity(producer, max_ttft_penalty_ms=3000, **gate).filter(CycleState(), req, eps)) == ["e0"]
    assert names(affinity(producer, max_ttft_penalty_ms=0, **gate).filter(CycleState(), req, eps)) == ["e0"]  # always stick


def test_token_gate_of_the_guides_breaks_on_in_flight_token_difference() -> None:
    producer = ApproxPrefixCacheProducer()
    eps = pool(2)
    req = make_request(prompt=PROMPT)
    warm(producer, req, eps[0])
    eps[0].inflight_tokens, eps[1].inflight_tokens = 500, 50
    f = affinity(producer, max_ttft_penalty_ms=0, max_tokens_in_flight_penalty=100)
    assert names(f.filter(CycleState(), req, eps)) == ["e0", "e1"]
    f = affinity(producer, max_ttft_penalty_ms=0, max_tokens_in_flight_penalty=1000)
    assert names(f.filter(CycleState(), req, eps)) == ["e0"]


def test_latency_predictor_source_without_predictions_is_a_missing_signal() -> None:
    producer = ApproxPrefixCacheProducer()
    eps = pool(2)
    req = make_request(prompt=PROMPT)
    warm(producer, req, eps[0])
    f = affinity(producer, ttft_source="latencyPredictor")
    assert f.filter(CycleState(), req, eps) == eps


def test_exploration_skips_the_gate_at_its_rate() -> None:
    producer = ApproxPrefixCacheProducer()
    eps = pool(2)
    req = make_request(prompt=PROMPT)
    warm(producer, req, eps[0])
    f = affinity(producer, max_ttft_penalty_ms=0, exploration_probability=0.25)
    kept_all = sum(len(f.filter(CycleState(), req, eps)) == 2 for _ in range(4000))
    assert 850 < kept_all < 1150


def test_inflight_producer_charges_uncached_tokens_and_releases_on_first_byte_when_streamed() -> None:
    producer = ApproxPrefixCacheProducer()
    plugins = {"approx-prefix-cache-producer": producer}
    load = InFlightLoadProducer(params=InFlightLoadParams(), plugins=plugins)  # type: ignore[arg-type]
    eps = pool(2)
    req = make_request(prompt=PROMPT, stream=True)
    warm(producer, req, eps[0], blocks=48)  # 768 of 1024 tokens cached on e0
    cycle = CycleState()
    assert load.current_request_tokens(cycle, req, eps) == [256, 1024]
    load.pre_request(cycle, req, SchedulingResult({"default": ProfileResult([eps[0]])}, "default"))
    assert (load.load("e0").requests, load.load("e0").tokens) == (1, 256)
    load.response_started(req, eps[0])
    assert (load.load("e0").requests, load.load("e0").tokens) == (1, 0)
    load.response_complete(req, eps[0], {})
    assert (load.load("e0").requests, load.load("e0").tokens) == (0, 0)


def test_inflight_producer_output_estimate_is_unknown_bucket_capped_by_max_tokens() -> None:
    load = InFlightLoadProducer(params=InFlightLoadParams(add_estimated_output_tokens=True))
    eps = pool(1)
    assert load.current_request_tokens(CycleState(), make_request(prompt=b"abcd"), eps) == [1 + 1000]
    assert load.current_request_tokens(CycleState(), make_request(prompt=b"abcd", max_tokens=10), eps) == [11]


def test_token_load_scorer_formula_with_and_without_the_producer() -> None:
    eps = pool(3)
    for e, t in zip(eps, (0, 1000, 5000)):
        e.inflight_tokens = t
    req = make_request(prompt=b"")
    assert TokenLoadScorer(queue_threshold=4000).score(CycleState(), req, eps) == pytest.approx([1.0, 0.75, 0.0])
    load = InFlightLoadProducer()
    req = make_request(prompt=b"x" * 4000)  # adds 1000 tokens to every candidate
    assert TokenLoadScorer(queue_threshold=4000, producer=load).score(CycleState(), req, eps) == pytest.approx([0.75] * 3)


@pytest.mark.parametrize(("params", "threshold"), [
    ("{queueThresholdTokens: 1000}", 1000), ("{queueThreshold: 500}", 500), ("{queueThresholdTokens: 0}", 4194304), ("{}", 4194304),
])
def test_token_load_threshold_keys(params: str, threshold: int) -> None:
    text = f"apiVersion: llm-d.ai/v1alpha1\nkind: EndpointPickerConfig\nplugins:\n- type: token-load-scorer\n  parameters: {params}\n"
    scheduler = load_scheduler_text(text)
    scorer = next(p for p in scheduler.plugins if isinstance(p, TokenLoadScorer))
    assert scorer.queue_threshold == threshold


def _record(tmp_path: Path, **changes: object) -> Path:
    record = {"schema_version": 1, "status": "OK", "fingerprint": "sha256:abc", "chunk_tokens": 8192,
              "valid_samples": 20, "median_ttft_seconds": 0.5, "peak_prefill_tokens_per_second": 16384.0}
    record.update(changes)
    path = tmp_path / "calibration.json"
    path.write_text(json.dumps(record))
    return path


def _filter(params: str) -> PrefixCacheAffinityFilter:
    text = ("apiVersion: llm-d.ai/v1alpha1\nkind: EndpointPickerConfig\nplugins:\n"
            f"- type: prefix-cache-affinity-filter\n  parameters: {params}\n")
    return next(p for p in load_scheduler_text(text).plugins if isinstance(p, PrefixCacheAffinityFilter))


def test_calibration_precedence_explicit_then_matching_record_then_default(tmp_path: Path) -> None:
    path = _record(tmp_path)
    calibrated = f"{{prefillCalibrationFile: {path}, prefillCalibrationFingerprint: 'sha256:abc'"
    assert _filter(calibrated + "}").params.peak_prefill_throughput == 16384.0
    assert _filter(calibrated + ", peakPrefillThroughput: 15928}").params.peak_prefill_throughput == 15928.0
    other = f"{{prefillCalibrationFile: {path}, prefillCalibrationFingerprint: 'sha256:other'"
    assert _filter(other + "}").params.peak_prefill_throughput == 15928.0  # not applied, default stands
    with pytest.raises(ConfigError, match="different deployment"):
        _filter(other + ", prefillCalibrationRequired: true}")
    short = _record(tmp_path, valid_samples=3)
    with pytest.raises(ConfigError, match="valid_samples"):
        _filter(f"{{prefillCalibrationFile: {short}, prefillCalibrationFingerprint: 'sha256:abc', prefillCalibrationRequired: true}}")


@pytest.mark.parametrize(("params", "key"), [
    ("{affinityThreshold: 1.5}", "affinityThreshold"), ("{ttftSource: guess}", "ttftSource"),
    ("{peakPrefillThroughput: 0}", "peakPrefillThroughput"), ("{maxTTFTPenaltyMs: -1}", "maxTTFTPenaltyMs"),
    ("{bogus: 1}", "bogus"),
])
def test_bad_filter_parameters_name_the_key(params: str, key: str) -> None:
    with pytest.raises(ConfigError, match=key):
        _filter(params)


def test_llm_d_default_preset_sticks_until_the_sticky_endpoint_is_18s_behind() -> None:
    scheduler = build_preset("llm-d-default", rng=random.Random(3))
    eps = pool(2)
    req = make_request(prompt=PROMPT)
    first = scheduler.schedule(req, eps).endpoints[0]
    other = next(e for e in eps if e is not first)
    # The same prompt again sticks to the endpoint that has it although it carries more load...
    load = next(p for p in scheduler.plugins if isinstance(p, InFlightLoadProducer))
    assert load.load(first.name).tokens == 1024
    assert scheduler.schedule(make_request(prompt=PROMPT), eps).endpoints[0] is first
    # ...until its estimated TTFT is 18 s worse: 18 s × 30281 tok/s of uncached tokens in flight.
    load._loads[first.name] = InFlightLoad(requests=1, tokens=18 * 30281 + 1)
    assert scheduler.schedule(make_request(prompt=PROMPT), eps).endpoints[0] is other
