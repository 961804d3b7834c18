"""PreciseIndex fed what a real vLLM 0.32 sends: captured batches (empty topic, 128-token blocks,
sha256 engine hashes), extra keys (LoRA, multimodal, cache_salt) and KV-cache groups."""

from __future__ import annotations

import pytest

from epp.contracts.kv_events import FeedState, Removed, Stored
from epp._util.clock import VirtualClock
from epp.kvevents.decode import decode_message
from epp.request import LLMRequest, RequestKind
from epp.scheduling.prefix.index import BlockIndex
from epp.scheduling.prefix.precise import PreciseIndex
from epp.scheduling.prefix.tokens import engine_block_hashes
from epp.tokenizer.load import load_tokenizer
from tests.kvevents.captures import frames, messages

MODEL = "tiny-llama"
BS = 4
SIM = load_tokenizer("sim")


@pytest.fixture
def index() -> PreciseIndex:
    return PreciseIndex(VirtualClock(), BlockIndex(1000), resync_window=30.0)


def request(token_ids: list[int], salt: str | None = None, model: str = MODEL) -> LLMRequest:
    body = {"prompt": token_ids} if salt is None else {"prompt": token_ids, "cache_salt": salt}
    return LLMRequest("r", RequestKind.COMPLETIONS, model, body=body, prompt_token_ids=token_ids)


def keys(token_ids: list[int], block: int = BS, salt: str | None = None, model: str = MODEL) -> list[int]:
    return engine_block_hashes(request(token_ids, salt, model), SIM, block, 256)


def test_a_captured_vllm_stream_is_found_by_the_prompts_token_ids(index: PreciseIndex) -> None:
    """Three captured batches: two 5-block prompts, then a continuation of the first (parent = its
    4th block). The engine's sha256 hashes are mapped to epp's keys through the token ids."""
    batches = [decode_message(frames(m)) for m in messages("vllm_events1")]
    index.routed("e", "r", [1], MODEL)  # seeds the empty topic's root blocks with the routed model
    for batch in batches:
        index.ingest("e", batch.seq, batch.events, None)
    first, second, child = (b.events[0] for b in batches)
    assert isinstance(first, Stored) and isinstance(second, Stored) and isinstance(child, Stored)
    prompt = list(first.token_ids[: 4 * 128]) + list(child.token_ids)
    assert index.match(keys(prompt, 128), ["e"]) == [5]
    assert index.match(keys(list(second.token_ids), 128), ["e"]) == [5]
    assert index.feed_state("e") is FeedState.LIVE  # the lookup's first block was reported: keys agree


def test_events_before_any_routed_request_wait_for_the_model_that_seeds_them(index: PreciseIndex) -> None:
    """vLLM's empty topic names no model: a backfill (or traffic from elsewhere) that arrives before epp
    routed anything there is keyed once a routed request says which model the engine serves."""
    batches = [decode_message(frames(m)) for m in messages("vllm_events1")]
    for batch in batches:
        index.ingest("e", batch.seq, batch.events, None)
    assert index.held_blocks("e") == 0  # waiting: sha256 engine hashes alone would match nothing
    first = batches[0].events[0]
    assert isinstance(first, Stored)
    index.routed("e", "r", keys(list(first.token_ids), 128), MODEL)
    assert index.held_blocks("e") == 11
    assert index.match(keys(list(first.token_ids), 128), ["e"]) == [5]
    assert index.feed_state("e") is FeedState.LIVE  # the routed prompt's blocks were reported: keys agree


def test_captured_evictions_remove_what_was_stored(index: PreciseIndex) -> None:
    index.routed("e", "r", [1], MODEL)
    held = 0
    for message in messages("eviction_events"):
        batch = decode_message(frames(message))
        index.ingest("e", batch.seq, batch.events, None)
        held += sum(len(e.block_hashes) for e in batch.events if isinstance(e, Stored))
    assert 0 < index.held_blocks("e") < held  # removals of blocks stored before the capture began are moot


def store(token_ids: list[int], extra: list[object] | None, lora: str | None = None, group: int = 0,
          kind: str | None = None) -> Stored:  # fmt: skip
    blocks = len(token_ids) // BS
    extra_keys = None if extra is None else tuple(tuple(e) if e else None for e in extra)  # type: ignore[arg-type]
    return Stored(tuple(range(100, 100 + blocks)), None, tuple(token_ids), BS, lora, extra_keys, group, kind)


def test_cache_salt_is_part_of_the_key_as_in_vllm(index: PreciseIndex) -> None:
    toks = list(range(3 * BS))
    index.ingest("e", 0, [store(toks, [["s1"], None, None])], MODEL)
    assert index.match(keys(toks, salt="s1"), ["e"]) == [3]
    assert index.match(keys(toks), ["e"]) == [0]
    assert index.match(keys(toks, salt="s2"), ["e"]) == [0]


def test_sglangs_cache_salt_field_keys_like_vllms_extra_key(index: PreciseIndex) -> None:
    toks = list(range(2 * BS))
    index.ingest("e", 0, [Stored((1, 2), None, tuple(toks), BS, None, cache_salt="s1")], MODEL)
    assert index.match(keys(toks, salt="s1"), ["e"]) == [2]
    assert index.match(keys(toks), ["e"]) == [0]


def test_the_lora_name_in_extra_keys_seeds_like_the_adapter(index: PreciseIndex) -> None:
    toks = list(range(2 * BS))
    index.ingest("e", 0, [store(toks, [["sql", "s"], ["sql"]], lora="sql")], MODEL)
    assert index.match(keys(toks, salt="s", model="sql"), ["e"]) == [2]
    assert index.match(keys(toks, salt="s"), ["e"]) == [0]


def test_multimodal_blocks_never_match_the_same_placeholder_tokens_as_text(index: PreciseIndex) -> None:
    toks = list(range(3 * BS))
    index.ingest("e", 0, [store(toks, [None, [["img-hash", 0]], None])], MODEL)
    assert index.match(keys(toks), ["e"]) == [1]  # the block before the image still matches
    index.ingest("e", 1, [Removed((101,)), Removed((102,))], MODEL)  # removals find the mixed keys
    assert index.held_blocks("e") == 1


def test_only_full_attention_groups_are_indexed(index: PreciseIndex) -> None:
    toks = list(range(2 * BS))
    index.ingest("e", 0, [store(toks, None, group=1, kind="sliding_window")], MODEL)
    assert index.held_blocks("e") == 0
    index.ingest("e", 1, [store(toks, None, group=0, kind="full_attention"), Removed((100,), 1)], MODEL)
    assert index.match(keys(toks), ["e"]) == [2]
