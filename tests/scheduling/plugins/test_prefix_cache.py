"""Prefix-cache scorer and its approximate producer, alone and in the gie-default preset."""

from __future__ import annotations

import logging
import random

import pytest

from epp.datastore import EndpointMetrics
from epp.scheduling.framework import CycleState
from epp.plugin.params import ParamError, decode_params
from epp.scheduling.plugins.scorers import prefix_cache
from epp.scheduling.plugins.scorers.prefix_cache import PrefixCacheScorer
from epp.scheduling.prefix.producer import ApproxPrefixCacheProducer, PrefixIndexParams
from epp.config.presets import build_preset
from epp.plugin.registry import PluginHandle
from tests.conftest import make_request, make_state, make_states

SYSTEM = b"You are a helpful assistant. " * 20  # 580 bytes: 9 blocks of 64


def schedule_once(scorer: PrefixCacheScorer, prompt: bytes, endpoints: list, pick: int, model: str = "m") -> list[float]:  # type: ignore[type-arg]
    """Score, then tell the producer endpoint ``pick`` got the request (what PreRequest does)."""
    from epp.scheduling.framework import ProfileResult, SchedulingResult

    cycle = CycleState()
    request = make_request(model=model, prompt=prompt)
    scores = scorer.score(cycle, request, endpoints)
    result = SchedulingResult({"default": ProfileResult([endpoints[pick]])}, "default")
    scorer.producer.pre_request(cycle, request, result)
    return scores


def test_score_is_matched_over_total_blocks_after_the_pick_is_recorded() -> None:
    scorer = PrefixCacheScorer(ApproxPrefixCacheProducer())
    endpoints = make_states(3)
    assert schedule_once(scorer, SYSTEM + b"q1" * 64, endpoints, pick=1) == [0.0, 0.0, 0.0]
    scores = schedule_once(scorer, SYSTEM + b"q2" * 64, endpoints, pick=1)
    # 9 shared system blocks of 11 (580 + 128 bytes → 11 full blocks)
    assert scores == pytest.approx([0.0, 9 / 11, 0.0])


def test_models_never_share_entries() -> None:
    scorer = PrefixCacheScorer(ApproxPrefixCacheProducer())
    endpoints = make_states(2)
    schedule_once(scorer, SYSTEM, endpoints, pick=0, model="llama")
    assert schedule_once(scorer, SYSTEM, endpoints, pick=1, model="qwen") == [0.0, 0.0]
    assert schedule_once(scorer, SYSTEM, endpoints, pick=0, model="llama") == [1.0, 0.0]


def test_prefill_profile_pick_is_recorded_too() -> None:
    from epp.scheduling.framework import ProfileResult, SchedulingResult

    producer = ApproxPrefixCacheProducer()
    endpoints = make_states(3)
    request = make_request(prompt=SYSTEM)
    cycle = CycleState()
    result = SchedulingResult({"decode": ProfileResult([endpoints[0]]), "prefill": ProfileResult([endpoints[2]])}, "decode")
    producer.pre_request(cycle, request, result)
    assert producer.match(CycleState(), request, endpoints)[1] == [9, 0, 9]


def test_auto_tune_uses_the_endpoint_block_size() -> None:
    producer = ApproxPrefixCacheProducer()
    tuned = [make_state("a", metrics=EndpointMetrics(0.0, block_size=32))]
    assert producer.info(CycleState(), make_request(prompt=b"x" * 256), tuned).total == 2  # 32 tokens × 4 bytes
    fixed = ApproxPrefixCacheProducer(params=PrefixIndexParams(auto_tune=False))
    assert fixed.info(CycleState(), make_request(prompt=b"x" * 256), tuned).total == 4


def test_match_length_weight_rewards_long_matches() -> None:
    scorer = PrefixCacheScorer(ApproxPrefixCacheProducer(), match_length_weight=0.5)
    endpoints = make_states(2)
    schedule_once(scorer, SYSTEM, endpoints, pick=0)
    # 9 of 9 blocks matched = 144 tokens of the 8192-token scale
    assert schedule_once(scorer, SYSTEM, endpoints, pick=0) == pytest.approx([0.5 + 0.5 * 144 / 8192, 0.0])


def test_gie_default_sends_repeated_prefixes_to_the_same_endpoint() -> None:
    scheduler = build_preset("gie-default", rng=random.Random(1))
    endpoints = make_states(8)
    for e in endpoints:  # equal load everywhere: only the prefix differs
        e.metrics, e.stale = EndpointMetrics(0.0, waiting=1, kv_usage=0.2), False
    rng = random.Random(2)
    prefixes = [rng.randbytes(1024) for _ in range(4)]
    homes: dict[int, set[str]] = {i: set() for i in range(4)}
    for n in range(40):
        i = n % 4
        result = scheduler.schedule(make_request(prompt=prefixes[i] + rng.randbytes(256)), endpoints)
        homes[i].add(result.endpoints[0].name)
    assert all(len(h) == 1 for h in homes.values())


def test_factory_creates_shares_or_rejects_producers() -> None:
    handle = PluginHandle()
    scorer = prefix_cache.factory("prefix", {"lruCapacityPerServer": 10}, handle)
    assert scorer.producer.params.lru_capacity_per_server == 10
    assert handle.plugins["approx-prefix-cache-producer"] is scorer.producer
    again = prefix_cache.factory("prefix2", {}, handle)
    assert again.producer is scorer.producer
    with pytest.raises(ParamError, match="blockSizeTokens: belongs on"):
        prefix_cache.factory("prefix3", {"blockSizeTokens": 32}, handle)
    with pytest.raises(ParamError, match="prefixMatchInfoProducerName"):
        prefix_cache.factory("p4", {"prefixMatchInfoProducerName": "precise-prefix-cache-producer"}, handle)
    with pytest.raises(ParamError, match="blockSize: must be at least 1"):
        prefix_cache.factory("p5", {"blockSize": 0}, PluginHandle())


def test_deprecated_character_block_size_becomes_tokens_with_one_warning(caplog: pytest.LogCaptureFixture) -> None:
    """GIE v1.x configs give ``blockSize`` in characters; GIE's 4 characters per token converts it, and
    ``blockSizeTokens`` wins when both are given."""
    with caplog.at_level(logging.WARNING, "epp.scheduling.prefix"):
        scorer = prefix_cache.factory("p", {"blockSize": 64}, PluginHandle())
    assert scorer.producer.params.block_size_tokens == 16
    assert [r.getMessage() for r in caplog.records if "deprecated" in r.getMessage()] == [
        "prefix cache: blockSize (64 characters) is deprecated; using blockSizeTokens 16 (4 characters per token); "
        "set blockSizeTokens instead"]
    assert prefix_cache.factory("p", {"blockSize": 6}, PluginHandle()).producer.params.block_size_tokens == 1
    both = approx_producer_params({"blockSize": 64, "blockSizeTokens": 32})
    assert both.block_size_tokens == 32
    assert approx_producer_params({}).block_size_tokens == 16


def approx_producer_params(raw: dict[str, int]) -> PrefixIndexParams:
    return decode_params(PrefixIndexParams, raw)
