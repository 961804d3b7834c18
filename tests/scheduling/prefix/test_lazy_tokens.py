"""The precise producer tokenizes a prompt only as far as some endpoint holds it: matches stay exact,
the rest is hashed at the request's first response (then the fallback learns all of it), and a
failed request leaves nothing behind. Lazily read hashes equal ``engine_block_hashes``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from epp._util.clock import VirtualClock
from epp.config import load_scheduler_text
from epp.datastore import Datastore, Endpoint, EndpointMetrics, EndpointState
from epp.request import LLMRequest, RequestKind
from epp.scheduling.framework import CycleState
from epp.scheduling.prefix.precise_producer import PrecisePrefixCacheProducer
from epp.scheduling.prefix.producer import PrefixMatch
from epp.scheduling.prefix.tokens import engine_block_hashes, engine_block_stream
from epp.tokenizer.hf import HFTokenizer

TINY = Path(__file__).parents[2] / "data" / "vllm-0.32-cpu" / "tiny-llama"
HEADER = "apiVersion: llm-d.ai/v1alpha1\nkind: EndpointPickerConfig\n"
SENTENCE = "The function returns the number of items in the list. "


@pytest.fixture(scope="module")
def tiny() -> HFTokenizer:
    return HFTokenizer.from_dir(TINY)


def completion(prompt: str, rid: str = "r") -> LLMRequest:
    return LLMRequest(rid, RequestKind.COMPLETIONS, "m", body={"model": "m", "prompt": prompt})


def chat(turns: list[str], rid: str = "r") -> LLMRequest:
    messages = [{"role": "user" if i % 2 == 0 else "assistant", "content": t} for i, t in enumerate(turns)]
    return LLMRequest(rid, RequestKind.CHAT_COMPLETIONS, "m", body={"model": "m", "messages": messages})


_WORDS = st.sampled_from(["the", " list", "  ", "\n", "\n\n", ".", " items", "42", "é", "\t", " returns", "'s", "中文"])


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.lists(_WORDS, max_size=400), min_size=1, max_size=3), st.booleans(), st.sampled_from([1, 16, 128]),
       st.integers(1, 300), st.integers(1, 50))  # fmt: skip
def test_lazily_read_hashes_equal_whole_ones(tiny: HFTokenizer, turns: list[list[str]], is_chat: bool, block: int,
                                             max_blocks: int, step: int) -> None:  # fmt: skip
    texts = ["".join(t) for t in turns]
    request = chat(texts) if is_chat else completion("".join(texts))
    whole = engine_block_hashes(request, tiny, block, max_blocks)
    hashes, tail = engine_block_stream(request, tiny, block, max_blocks)
    assert hashes == [] and tail is not None
    info = PrefixMatch(hashes, block, tail=tail)
    while info.grow(step):
        assert info.hashes == whole[: len(info.hashes)]
    assert info.hashes == whole and info.tail is None and info.total == len(whole)


def test_token_id_prompts_and_the_sim_tokenizer_are_hashed_at_once(tiny: HFTokenizer) -> None:
    ids = LLMRequest("r", RequestKind.COMPLETIONS, "m", body={"prompt": list(range(40))})
    assert engine_block_stream(ids, tiny, 16, 10) == (engine_block_hashes(ids, tiny, 16, 10), None)


def _setup(endpoints: int = 4, scorer: str = "prefix-cache-scorer") -> tuple[Any, PrecisePrefixCacheProducer, list[EndpointState]]:
    """A scheduler with the precise producer (tiny model) feeding ``scorer``, and ``endpoints`` fresh endpoints."""
    config = (f"{HEADER}plugins:\n- {{type: precise-prefix-cache-producer, name: kv, parameters: {{mode: bind,"
              f" bindEndpoint: 'tcp://127.0.0.1:0', tokenizer: '{TINY}'}}}}\n"
              f"- {{type: {scorer}, parameters: {{prefixMatchInfoProducerName: kv}}}}\n- {{type: max-score-picker}}\n"
              f"schedulingProfiles:\n- name: default\n  plugins:\n  - {{pluginRef: {scorer}}}\n"
              "  - {pluginRef: max-score-picker}\n")  # fmt: skip
    clock = VirtualClock()
    scheduler = load_scheduler_text(config, clock=clock)
    producer = next(p for p in scheduler.plugins if isinstance(p, PrecisePrefixCacheProducer))
    datastore = Datastore(clock)
    scheduler.attach(datastore)
    states = []
    for i in range(endpoints):
        endpoint = Endpoint(f"e{i}", "127.0.0.1", 8000 + i)
        datastore.upsert(endpoint)
        states.append(EndpointState(endpoint, EndpointMetrics(scraped_at=0.0), stale=False))
    return scheduler, producer, states


def test_a_new_prompt_is_read_one_window_and_learned_whole_at_its_first_response() -> None:
    scheduler, producer, states = _setup()
    request = completion(SENTENCE * 200, "first")  # about 2,000 tokens: 125 blocks of 16
    whole = engine_block_hashes(request, HFTokenizer.from_dir(TINY), 16, 8192)
    info, held = producer.match(CycleState(), request, states)
    assert held == [0, 0, 0, 0] and 0 < len(info.hashes) <= 16  # one window (~130 tokens): no endpoint holds its blocks
    assert abs(info.total - len(whole)) <= 4  # the rest estimated from the text
    result = scheduler.schedule(request, states)
    chosen = result.endpoints[0]
    names = [s.endpoint.name for s in states]
    fallback = producer.precise.fallback
    assert 0 < fallback.match(whole, names)[names.index(chosen.name)] < len(whole)  # what the pick read
    scheduler.response_started(request, chosen)  # prefill done: the engine holds the whole prompt
    assert fallback.match(whole, names)[names.index(chosen.name)] == len(whole)
    again = completion(SENTENCE * 200 + "And one more question?", "second")
    info, held = producer.match(CycleState(), again, states)
    assert held[names.index(chosen.name)] == len(whole) and sum(held) == len(whole)  # exact: read to the end
    scheduler.response_complete(request, chosen, {})
    assert not producer.tails and not producer.added


def test_a_failed_request_learns_no_tail_and_forgets_what_the_pick_added() -> None:
    scheduler, producer, states = _setup()
    request = completion(SENTENCE * 200, "failed")
    whole = engine_block_hashes(request, HFTokenizer.from_dir(TINY), 16, 8192)
    chosen = scheduler.schedule(request, states).endpoints[0]
    assert len(producer.tails) == 1
    scheduler.response_complete(request, chosen, {}, "engine-error")
    assert not producer.tails
    assert producer.precise.fallback.match(whole, [s.endpoint.name for s in states]) == [0, 0, 0, 0]


def test_a_response_that_never_said_it_started_still_teaches_the_whole_prompt() -> None:
    scheduler, producer, states = _setup()
    request = chat([SENTENCE * 100, "Sure.", SENTENCE * 50], "r1")
    whole = engine_block_hashes(request, HFTokenizer.from_dir(TINY), 16, 8192)
    chosen = scheduler.schedule(request, states).endpoints[0]
    scheduler.response_complete(request, chosen, {"prompt_tokens": 1})
    assert max(producer.precise.fallback.match(whole, [s.endpoint.name for s in states])) == len(whole)


def test_the_ttft_scorer_holds_the_whole_prompt_once_its_rest_is_learned() -> None:
    """The eviction estimate marks the prompt's last block; lazily hashed, that block is known only
    after the first response, and the scorer's recency hears of it then."""
    from epp.scheduling.plugins.scorers.ttft_predictor import TTFTPredictorScorer

    scheduler, _, states = _setup(2, "ttft-predictor-scorer")
    scorer = next(p for p in scheduler.plugins if isinstance(p, TTFTPredictorScorer))
    request = completion(SENTENCE * 200, "long")
    whole = engine_block_hashes(request, HFTokenizer.from_dir(TINY), 16, 8192)
    chosen = scheduler.schedule(request, states).endpoints[0]
    recency = scorer.recency[chosen.name]
    assert recency.written_since(whole, len(whole)) is None  # the pick read one window: the end is unmarked
    scheduler.response_started(request, chosen)
    assert recency.written_since(whole, len(whole)) == 0  # held: the request is in flight
    scheduler.response_complete(request, chosen, {"prompt_tokens": 2000, "completion_tokens": 1})
    assert recency.written_since(whole, len(whole)) == 0  # released, nothing written since


_PROMPTS = [SENTENCE * 30, SENTENCE * 30 + "A different ending. " * 20, "Another start. " * 90, SENTENCE * 12]


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 3), st.sampled_from(range(len(_PROMPTS))), st.integers(0, 200)), max_size=8),
       st.sampled_from(range(len(_PROMPTS))), st.booleans())  # fmt: skip
def test_lazy_matches_equal_whole_matches(held: list[tuple[int, int, int]], asked: int, is_chat: bool) -> None:
    """Endpoints holding any prefixes of related prompts (shared starts, one extending another): the
    lazily hashed prompt's matches are the whole prompt's, and it is read little past the longest."""
    _, producer, states = _setup()
    tokenizer = HFTokenizer.from_dir(TINY)

    def request(i: int, rid: str) -> LLMRequest:
        return chat([_PROMPTS[i]], rid) if is_chat else completion(_PROMPTS[i], rid)

    for endpoint, prompt, blocks in held:
        hashes = engine_block_hashes(request(prompt, "x"), tokenizer, 16, 8192)[:blocks]
        producer.index.add(f"e{endpoint}", hashes)
    names = [s.endpoint.name for s in states]
    whole = engine_block_hashes(request(asked, "x"), tokenizer, 16, 8192)
    expected = producer.index.match(whole, names)
    info, got = producer.match(CycleState(), request(asked, "r"), states)
    assert got == expected
    assert info.hashes == whole[: len(info.hashes)]
    # read to the end, or at most twice the longest match and a window (~8 blocks) or two
    assert len(info.hashes) == len(whole) or len(info.hashes) <= 2 * max(expected) + 16
