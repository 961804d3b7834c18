"""No plugin learns from a failure as if it were a success (issue #16's audit of every response hook).

A request to a dead engine fails in microseconds; reported as a completion it would make that engine
look idle (TTFT ledger), cached (prefix index, radix tree, recency) or freshly used (no-hit LRU). Each
plugin's ``response_failed`` undoes what its PreRequest booked instead.
"""

from __future__ import annotations

import random

import pytest

from epp._util.clock import VirtualClock
from epp.config import load_scheduler
from epp.datastore import EndpointMetrics
from epp.request import LLMRequest, RequestKind
from epp.scheduling.framework import CycleState, ProfileResult, SchedulingResult
from epp.scheduling.plugins.producers.burst_prefix import BurstPrefixCacheProducer
from epp.scheduling.plugins.producers.mm_embeddings import MMEmbeddingsCacheProducer
from epp.scheduling.plugins.scorers.no_hit_lru import NoHitLRUScorer
from epp.scheduling.plugins.scorers.sglang_cache_aware import SGLangCacheAwareScorer
from epp.scheduling.plugins.scorers.ttft_predictor import TTFTPredictorScorer
from epp.scheduling.prefix.producer import ApproxPrefixCacheProducer
from epp.config.presets import DEFAULT_PRESET
from epp.plugin.registry import PluginHandle
from epp.scheduling.ttft import EndpointLedger, Flight, PrefixRecency
from tests.conftest import make_request, make_state, make_states
from tests.scheduling.plugins.test_cache_producers import burst_scheduler, chat_with


def picked(endpoint_index: int, endpoints: list) -> SchedulingResult:  # type: ignore[type-arg]
    return SchedulingResult({"default": ProfileResult([endpoints[endpoint_index]])}, "default")


def test_a_failed_request_leaves_the_ledger_without_marking_earlier_prefills_done() -> None:
    ledger, reference = EndpointLedger(), EndpointLedger()
    for book in (ledger, reference):
        book.routed("a", Flight(10.0, 0.5, 0.5, 1000, 100))
        book.routed("dead", Flight(10.0, 0.3, 0.3, 1000, 100))
    ledger.abandoned("dead")
    reference.finished("dead", 10.001)  # the old way: a fast "completion" says a was prefilled too
    assert list(ledger.pending) == ["a"] and len(ledger) == 1
    assert ledger.backlog(10.0) == pytest.approx(0.5)  # a is still queued; dead's own prefill is gone
    assert reference.backlog(10.001) == 0.0 and list(reference.decoding) == ["a"]


def test_recency_forgets_the_marks_a_failed_request_made() -> None:
    recency = PrefixRecency(stride=2)
    recency.hold("old", [1, 2], 10)
    recency.release("old")
    recency.hold("r", [1, 2, 3, 4], 10)
    recency.forget("r")
    assert recency.written_since([1, 2, 3, 4], 4) is None  # never cached: nothing marks blocks 3-4
    assert recency.written_since([1, 2], 2) is not None  # the earlier, successful request's mark stays


def test_the_ttft_scorer_drops_a_failed_flight_and_keeps_the_others_pending() -> None:
    clock = VirtualClock(10.0)
    scheduler = load_scheduler(DEFAULT_PRESET, clock=clock, rng=random.Random(0))
    scorer = next(p for p in scheduler.plugins if isinstance(p, TTFTPredictorScorer))
    state = make_state("e0", metrics=EndpointMetrics(scraped_at=clock.now(), block_size=16, num_gpu_blocks=29202))
    requests = [LLMRequest(request_id=f"r{i}", kind=RequestKind.COMPLETIONS, model="m",
                           prompt_token_ids=list(range(i * 5000, i * 5000 + 4000)), max_tokens=16) for i in range(3)]
    for r in requests:
        scheduler.schedule(r, [state])
    scheduler.response_complete(requests[2], state, {}, failure="http-503")
    ledger = scorer.ledgers["e0"]
    assert list(ledger.pending) == ["r0", "r1"]  # r2 failing says nothing about r0 and r1
    booked = scorer.learner["e0"]._queue  # noqa: SLF001  (what waits to teach a latency)
    assert list(booked) == ["r0", "r1"]  # r2's timing is no latency sample


def test_a_failed_request_cached_nothing_in_the_prefix_index() -> None:
    producer = ApproxPrefixCacheProducer()
    endpoints = make_states(2)
    held = make_request(prompt=b"s" * 640)
    producer.pre_request(CycleState(), held, picked(0, endpoints))
    producer.response_complete(held, endpoints[0], {})
    longer = LLMRequest(request_id="r2", kind=RequestKind.COMPLETIONS, model="m", prompt_bytes=b"s" * 640 + b"t" * 640)
    producer.pre_request(CycleState(), longer, picked(0, endpoints))
    producer.response_failed(longer, endpoints[0], "http-503")
    _, again = producer.match(CycleState(), longer, endpoints)
    _, shared = producer.match(CycleState(), held, endpoints)
    assert again[0] == shared[0] > 0 and again[1] == 0  # the earlier prompt's blocks stay, the new ones are gone
    assert len(producer.added) == 0


def test_no_hit_lru_puts_a_failed_cold_pick_back() -> None:
    handle = PluginHandle()
    scorer = NoHitLRUScorer(handle)
    endpoints = make_states(3)
    for rid, pick in (("ok", 1), ("bad", 0)):
        cycle, request = CycleState(), LLMRequest(request_id=rid, kind=RequestKind.COMPLETIONS, model="m", prompt_bytes=b"x")
        scorer.score(cycle, request, endpoints)
        scorer.pre_request(cycle, request, picked(pick, endpoints))
    scorer.response_failed(LLMRequest(request_id="bad", kind=RequestKind.COMPLETIONS, model="m"), endpoints[0], "http-503")
    assert scorer.score(CycleState(), make_request(prompt=b"y"), endpoints) == pytest.approx([1.0, 0.0, 0.5])  # e0 never used again


def test_the_sglang_tree_withdraws_a_failed_prompt_but_keeps_what_the_endpoint_held() -> None:
    scorer = SGLangCacheAwareScorer(VirtualClock())
    endpoints = make_states(2)
    first = make_request(prompt=b"a" * 100)
    scorer.score(CycleState(), first, endpoints)
    scorer.pre_request(CycleState(), first, picked(0, endpoints))
    scorer.response_complete(first, endpoints[0], {})
    failed = LLMRequest(request_id="r2", kind=RequestKind.COMPLETIONS, model="m", prompt_bytes=b"a" * 100 + b"b" * 50)
    scorer.pre_request(CycleState(), failed, picked(0, endpoints))
    scorer.response_failed(failed, endpoints[0], "http-504")
    tree = scorer.trees["m"]
    assert tree.tenant_chars["e0"] == 100
    assert tree.prefix_match("a" * 100 + "b" * 50, ["e0"]) == (100, "e0")


def test_the_multimodal_cache_forgets_items_a_failed_request_sent() -> None:
    producer = MMEmbeddingsCacheProducer()
    endpoints = make_states(2)
    producer.pre_request(CycleState(), chat_with("http://img/a", rid="ok"), picked(0, endpoints))  # type: ignore[arg-type]
    producer.response_complete(chat_with(rid="ok"), endpoints[0], {})  # type: ignore[arg-type]
    failed = chat_with("http://img/a", "http://img/b", rid="bad")
    producer.pre_request(CycleState(), failed, picked(0, endpoints))  # type: ignore[arg-type]
    producer.response_failed(failed, endpoints[0], "http-503")  # type: ignore[arg-type]
    assert producer.matched(CycleState(), failed, endpoints) == (2, [1, 0])  # type: ignore[arg-type]  # a stays, b is gone


def test_a_burst_does_not_follow_a_failed_placement() -> None:
    scheduler, _ = burst_scheduler(k=-1)
    endpoints = make_states(2)
    producer = next(p for p in scheduler.plugins if isinstance(p, BurstPrefixCacheProducer))  # type: ignore[attr-defined]
    request = make_request(prompt=b"q" * 1024)
    first = scheduler.schedule(request, endpoints).endpoints[0]  # type: ignore[attr-defined]
    assert producer.match(CycleState(), request, endpoints)[1] != [0, 0]  # the burst's next sample would follow it
    scheduler.response_complete(request, first, {}, failure="http-503")  # type: ignore[attr-defined]
    assert producer.match(CycleState(), request, endpoints)[1] == [0, 0]
