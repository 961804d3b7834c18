"""mm-embeddings-cache producer/scorer and burst-prefix-cache-producer: encoder-cache affinity from the
request's media blocks, and a burst of identical prompts kept on one replica up to maxPerReplica."""

from __future__ import annotations

import random

import orjson
import pytest

from epp._util.clock import VirtualClock
from epp.config import load_scheduler_text
from epp.datastore import EndpointState
from epp.request.parse import parse_request
from epp.scheduling.framework import CycleState, ProfileResult, SchedulingResult
from epp.scheduling.plugins.producers.burst_prefix import BurstPrefixCacheProducer
from epp.scheduling.plugins.producers.mm_embeddings import MMEmbeddingsCacheProducer, MMEmbeddingsCacheScorer, MMParams
from epp.scheduling.plugins.scorers.prefix_cache import PrefixCacheScorer
from tests.conftest import make_request, make_state

HEAD = "apiVersion: llm-d.ai/v1alpha1\nkind: EndpointPickerConfig\nplugins:\n"


def chat_with(*urls: str, rid: str = "r") -> object:
    content = [{"type": "text", "text": "what is this"}] + [{"type": "image_url", "image_url": {"url": u}} for u in urls]
    body = orjson.dumps({"model": "m", "messages": [{"role": "user", "content": content}]})
    return parse_request(rid, {":path": "/v1/chat/completions"}, body)


def picked(endpoint: EndpointState) -> SchedulingResult:
    return SchedulingResult({"default": ProfileResult([endpoint])}, "default")


def pool(n: int) -> list[EndpointState]:
    return [make_state(f"e{i}", address=f"10.0.0.{i + 1}") for i in range(n)]


def test_mm_scorer_is_matched_over_request_items_and_lru_bounded() -> None:
    producer = MMEmbeddingsCacheProducer(params=MMParams(cache_size_in_mb_per_server=4))  # 2 items per endpoint
    scorer = MMEmbeddingsCacheScorer(producer)
    eps = pool(2)
    first = chat_with("http://img/a", "http://img/b", "http://img/a")  # a repeated: counts once
    producer.pre_request(CycleState(), first, picked(eps[0]))  # type: ignore[arg-type]
    assert scorer.score(CycleState(), chat_with("http://img/a", "http://img/c"), eps) == [0.5, 0.0]  # type: ignore[arg-type]
    assert scorer.score(CycleState(), chat_with("http://img/a", "http://img/b"), eps) == [1.0, 0.0]  # type: ignore[arg-type]
    assert scorer.score(CycleState(), make_request(), eps) == [0.0, 0.0]
    producer.pre_request(CycleState(), chat_with("http://img/c"), picked(eps[0]))  # type: ignore[arg-type]
    # capacity 2: the oldest of a/b was evicted
    assert scorer.score(CycleState(), chat_with("http://img/a", "http://img/b"), eps)[0] == 0.5  # type: ignore[arg-type]
    producer.endpoint_removed(eps[0].endpoint)
    assert scorer.score(CycleState(), chat_with("http://img/c"), eps) == [0.0, 0.0]  # type: ignore[arg-type]


def test_mm_items_go_to_the_encode_profiles_endpoint_in_a_disaggregated_pick() -> None:
    producer = MMEmbeddingsCacheProducer()
    eps = pool(2)
    result = SchedulingResult({"decode": ProfileResult([eps[0]]), "encode": ProfileResult([eps[1]])}, "decode")
    producer.pre_request(CycleState(), chat_with("http://img/x"), result)  # type: ignore[arg-type]
    assert producer.matched(CycleState(), chat_with("http://img/x"), eps) == (1, [0, 1])  # type: ignore[arg-type]


@pytest.mark.parametrize(("params", "capacity"), [("{cacheSizeInMBPerServer: 2048}", 1024), ("{cacheSizeInMB: 100}", 50),
                                                  ("{cacheSizeInMBPerServer: 0}", 2048), ("{}", 2048)])
def test_mm_capacity_from_config(params: str, capacity: int) -> None:
    plugins = load_scheduler_text(HEAD + f"- type: mm-embeddings-cache-producer\n  parameters: {params}\n"
                                  "- type: mm-embeddings-cache-scorer\n").plugins
    producer = next(p for p in plugins if isinstance(p, MMEmbeddingsCacheProducer))
    scorer = next(p for p in plugins if isinstance(p, MMEmbeddingsCacheScorer))
    assert producer.capacity == capacity and scorer.producer is producer


BURST = (HEAD + "- type: burst-prefix-cache-producer\n  parameters: {{windowDurationMs: 100, maxPerReplica: {k},"
         " minColocateBlocks: {m}}}\n- type: prefix-cache-scorer\n  parameters: {{prefixMatchInfoProducerName: burst-prefix-cache-producer}}\n"
         "- type: active-request-scorer\n- type: max-score-picker\n"
         "schedulingProfiles:\n- name: default\n  plugins:\n  - {{pluginRef: prefix-cache-scorer, weight: 2}}\n"
         "  - {{pluginRef: active-request-scorer, weight: 1}}\n  - {{pluginRef: max-score-picker}}\n")


def burst_scheduler(k: int, m: int = 0) -> tuple[object, VirtualClock]:
    clock = VirtualClock()
    return load_scheduler_text(BURST.format(k=k, m=m), clock=clock, rng=random.Random(4)), clock


def send(scheduler: object, eps: list[EndpointState], prompt: bytes, rid: str) -> str:
    chosen = scheduler.schedule(make_request(prompt=prompt), eps).endpoints[0]  # type: ignore[attr-defined]
    chosen.inflight_requests += 1  # what the director counts
    return chosen.name


def test_a_burst_of_identical_prompts_fills_one_replica_then_spills() -> None:
    prompt = b"p" * 1024  # 4 blocks of 64 tokens
    scheduler, clock = burst_scheduler(k=3)
    eps = pool(4)
    placed = [send(scheduler, eps, prompt, f"r{i}") for i in range(8)]
    # 3 per replica, each replica filled before the next (load balancing alone would spread 2-2-2-2)
    assert sorted(placed.count(n) for n in set(placed)) == [2, 3, 3]
    assert placed[0] == placed[1] == placed[2]


def test_outside_the_window_a_prompt_is_no_longer_steered() -> None:
    prompt = b"q" * 1024
    scheduler, clock = burst_scheduler(k=-1)
    eps = pool(2)
    first = send(scheduler, eps, prompt, "a")
    assert send(scheduler, eps, prompt, "b") == first  # within the window, despite the load
    clock.advance(0.2)
    producer = next(p for p in scheduler.plugins if isinstance(p, BurstPrefixCacheProducer))  # type: ignore[attr-defined]
    info, hits = producer.match(CycleState(), make_request(prompt=prompt), eps)
    assert hits == [0, 0]
    assert next(p for p in scheduler.plugins if isinstance(p, PrefixCacheScorer)).producer is producer  # type: ignore[attr-defined]


def test_min_colocate_blocks_attaches_a_prefix_sharing_prompt() -> None:
    base = b"s" * 1024
    scheduler, clock = burst_scheduler(k=-1, m=3)
    eps = pool(2)
    send(scheduler, eps, b"x" * 1024, "x")
    first = send(scheduler, eps, base, "a")  # the other replica, by load
    other = base[:768] + b"t" * 256  # shares 3 of 4 blocks; its replica is under its fair share (2 of 3)
    assert send(scheduler, eps, other, "b") == first
    assert send(scheduler, eps, base[:768] + b"v" * 256, "c") != first  # would exceed the fair share
    unrelated = b"u" * 1024
    producer = next(p for p in scheduler.plugins if isinstance(p, BurstPrefixCacheProducer))  # type: ignore[attr-defined]
    assert producer.match(CycleState(), make_request(prompt=unrelated), eps)[1] == [0, 0]
