from __future__ import annotations

import pytest

from epp.scheduling.framework import CycleState, ProfileResult, SchedulingResult
from epp.scheduling.plugins.scorers.no_hit_lru import NoHitLRUScorer
from epp.scheduling.prefix.producer import ApproxPrefixCacheProducer
from epp.plugin.registry import PluginHandle
from tests.conftest import make_request, make_states

PROMPT = b"p" * 640


def cycle_for(scorer: NoHitLRUScorer, producer: ApproxPrefixCacheProducer | None, endpoints: list, prompt: bytes, pick: int) -> list[float]:  # type: ignore[type-arg]
    cycle = CycleState()
    request = make_request(prompt=prompt)
    scores = scorer.score(cycle, request, endpoints)
    result = SchedulingResult({"default": ProfileResult([endpoints[pick]])}, "default")
    scorer.pre_request(cycle, request, result)
    if producer is not None:
        producer.pre_request(cycle, request, result)
    return scores


def test_cold_requests_rank_never_used_first_then_least_recent() -> None:
    handle = PluginHandle()
    producer = ApproxPrefixCacheProducer()
    handle.add(producer)
    scorer = NoHitLRUScorer(handle)
    endpoints = make_states(3)
    assert cycle_for(scorer, producer, endpoints, b"a" * 640, pick=1) == pytest.approx([1.0, 0.5, 0.0])
    # e1 was used: never-used e0, e2 come first, then e1
    assert cycle_for(scorer, producer, endpoints, b"b" * 640, pick=2) == pytest.approx([1.0, 0.0, 0.5])
    # now e1 (older) before e2 (newer); e0 never used
    assert cycle_for(scorer, producer, endpoints, b"c" * 640, pick=0) == pytest.approx([1.0, 0.5, 0.0])


def test_warm_request_is_neutral_and_does_not_touch_the_lru() -> None:
    handle = PluginHandle()
    producer = ApproxPrefixCacheProducer()
    handle.add(producer)
    scorer = NoHitLRUScorer(handle)
    endpoints = make_states(3)
    cycle_for(scorer, producer, endpoints, PROMPT, pick=0)
    assert cycle_for(scorer, producer, endpoints, PROMPT, pick=2) == [0.5, 0.5, 0.5]
    assert list(scorer._used) == ["e0"]


def test_without_a_producer_every_request_is_cold_and_lru_is_bounded() -> None:
    scorer = NoHitLRUScorer(PluginHandle(), lru_size=2)
    endpoints = make_states(3)
    for pick in (0, 1, 2):
        cycle_for(scorer, None, endpoints, PROMPT, pick=pick)
    assert list(scorer._used) == ["e1", "e2"]
    assert cycle_for(scorer, None, endpoints[:1], PROMPT, pick=0) == [1.0]


def test_named_producer_decides_coldness_and_an_unknown_name_is_an_error() -> None:
    from epp.plugin.params import ParamError
    from epp.scheduling.plugins.scorers.no_hit_lru import factory

    handle = PluginHandle()
    default = ApproxPrefixCacheProducer()  # the type-default producer never sees the traffic below
    named = ApproxPrefixCacheProducer("precise")
    handle.add(default)
    handle.add(named)
    scorer = factory("lru", {"prefixMatchInfoProducerName": "precise"}, handle)
    endpoints = make_states(3)
    cycle_for(scorer, named, endpoints, PROMPT, pick=0)
    # warm according to the named producer, although the default one has never seen the prompt
    assert cycle_for(scorer, named, endpoints, PROMPT, pick=1) == [0.5, 0.5, 0.5]
    with pytest.raises(ParamError, match="prefixMatchInfoProducerName"):
        factory("lru2", {"prefixMatchInfoProducerName": "missing"}, handle)
