"""The chain memo and the fast token packing give exactly the hashes of the plain chain."""

from __future__ import annotations

import dataclasses
import random

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from epp._util import hashing
from epp._util.hashing import (
    ChainMemo,
    chain_hashes,
    chain_run,
    hash_array,
    text_blocks,
    token_blocks,
    token_bytes,
)
from epp.request import LLMRequest, RequestKind
from epp.scheduling.prefix.hashing import prompt_block_hashes


def test_memoised_chains_equal_plain_chains_through_shared_prefixes_and_eviction() -> None:
    rng = random.Random(5)
    memo = ChainMemo(segment_blocks=4, capacity=16)  # small: segments are evicted and recomputed
    prefixes = [rng.randbytes(rng.randrange(0, 2000)) for _ in range(6)]
    for _ in range(300):
        data = rng.choice(prefixes) + rng.randbytes(rng.randrange(0, 700))
        block, seed = rng.choice([1, 7, 64]), rng.choice([0, 1, 2**64 - 1])
        assert memo.chain(data, block, seed) == chain_hashes(text_blocks(data, block), seed)
        assert len(memo) <= 16


def test_token_bytes_are_token_blocks_back_to_back() -> None:
    rng = random.Random(6)
    tokens = [rng.choice([0, 2**32 - 1, rng.randrange(2**32)]) for _ in range(1000)]
    assert token_bytes(tokens[:992]) == b"".join(token_blocks(tokens, 16))
    with pytest.raises(OverflowError):
        token_bytes([2**32])


@pytest.mark.parametrize("tokens", [False, True])
def test_prompt_hashes_with_a_memo_equal_those_without(tokens: bool) -> None:
    rng = random.Random(7)
    memo = ChainMemo(segment_blocks=8, capacity=64)
    shared = [rng.randrange(200_000) for _ in range(3000)]
    for i in range(40):
        ids = shared[: rng.randrange(3000)] + [rng.randrange(200_000) for _ in range(rng.randrange(500))]
        request = LLMRequest(f"r{i}", RequestKind.COMPLETIONS, "m", prompt_bytes=token_bytes(ids),
                             prompt_token_ids=ids if tokens else None)
        limit = rng.choice([16, 256, 8192])
        fresh = dataclasses.replace(request, block_hashes={})  # not the request's own hashes from the first call
        assert prompt_block_hashes(request, 16, limit, memo) == prompt_block_hashes(fresh, 16, limit)


def test_segments_alike_in_their_first_block_are_told_apart_by_their_bytes_and_arrays_equal_the_lists() -> None:
    """Segments are keyed by the hash before them and their first block's; two segments with one key
    (alike at first, different later, or one shorter) are told apart by their bytes, and each chain's
    uint64 array holds exactly its hashes."""
    rng = random.Random(8)
    memo = ChainMemo(segment_blocks=3, capacity=8)
    heads = [rng.randbytes(16) for _ in range(2)]  # few first blocks: most segments share a key with others
    for _ in range(300):
        data = b"".join(rng.choice(heads) + rng.choice([b"a", b"b"]) * 16 * rng.randrange(3) for _ in range(4))
        data = data[: rng.randrange(len(data) + 1)]
        chained = memo.chain(data, 16, 3)
        assert chained == chain_hashes(text_blocks(data, 16), 3)
        assert chained.array().tolist() == chained
        assert hash_array(chained) is chained.array() and hash_array(list(chained)).tolist() == chained


def test_a_segment_found_again_holds_its_own_copies_not_the_prompt_it_came_with() -> None:
    """A remembered segment points into its prompt's bytes and hashes until it is reused; then it keeps
    copies of its own, so what the memo keeps by reuse holds no old prompt alive."""
    memo = ChainMemo(segment_blocks=2, capacity=64)
    rng = random.Random(12)
    first = rng.randbytes(16 * 9)
    memo.chain(first, 16, 0)
    assert all(isinstance(s.data, memoryview) and s.lo >= 0 for s in memo._memo.values())
    memo.chain(first[: 16 * 4] + rng.randbytes(16 * 3), 16, 0)  # reuses the first two segments
    owned = [s for s in memo._memo.values() if s.lo < 0]
    assert len(owned) == 2
    for s in owned:
        assert type(s.data) is bytes and len(s.hashes) == 2 and len(s.array) == 2 and not s.array.flags.writeable
    assert memo.chain(first + b"x", 16, 0) == chain_hashes(text_blocks(first, 16), 0)
    longer = first + rng.randbytes(16 * 3)  # its first segments remembered: the new part is kept alone
    assert memo.chain(longer, 16, 0) == chain_hashes(text_blocks(longer, 16), 0)
    new = [s for s in memo._memo.values() if s.lo >= 0 and isinstance(s.data, memoryview) and s.data.obj is not first]
    assert new and all(len(s.data.obj) < len(longer) for s in new)


def test_the_same_prompt_again_is_the_same_chain_and_only_for_the_same_block_size_and_seed() -> None:
    memo = ChainMemo(segment_blocks=4, capacity=16)
    data = random.Random(9).randbytes(1000)
    first = memo.chain(data, 16, 1)
    assert memo.chain(bytes(data), 16, 1) is first  # equal bytes, another object: one comparison
    for block, seed in ((16, 2), (8, 1), (16, 1)):
        assert memo.chain(data, block, seed) == chain_hashes(text_blocks(data, block), seed)
    assert memo.chain(data[:-1], 16, 1) == chain_hashes(text_blocks(data[:-1], 16), 1)
    assert memo.chain(data[:-1] + b"x", 16, 1) == chain_hashes(text_blocks(data[:-1] + b"x", 16), 1)


@settings(max_examples=200, deadline=None)
@given(data=st.binary(max_size=600), block=st.integers(1, 80), seed=st.integers(0, 2**64 - 1))
def test_chain_run_is_the_chain_of_the_text_blocks(data: bytes, block: int, seed: int) -> None:
    assert chain_run(data, block, seed)[0] == chain_hashes(text_blocks(data, block), seed)
    start = len(data) // 3
    hashes, run = chain_run(data, block, seed, start, len(data) - 1)
    assert hashes == chain_hashes(text_blocks(data[start:-1], block), seed) == run.tolist()
    assert run.dtype == np.uint64 and not run.flags.writeable


def test_a_novel_prompt_is_hashed_in_one_pass_and_its_segments_serve_the_next_turn(monkeypatch: pytest.MonkeyPatch) -> None:
    """From the first segment the memo lacks, the rest is hashed by one call; every segment of it is
    remembered, so a longer prompt with that prefix (the next chat turn) hashes only its new blocks."""
    calls: list[int] = []
    plain = hashing.chain_run

    def counting(data: bytes, block_bytes: int, seed: int, start: int = 0, end: int | None = None) -> tuple[list[int], np.ndarray]:
        calls.append(((len(data) if end is None else end) - start) // block_bytes)
        return plain(data, block_bytes, seed, start, end)

    monkeypatch.setattr(hashing, "chain_run", counting)
    memo = ChainMemo(segment_blocks=4, capacity=64)
    rng = random.Random(10)
    turn = rng.randbytes(16 * 22 + 5)  # 22 blocks of 16: five full segments and a partial one, plus a tail
    first = memo.chain(turn, 16, 3)
    assert first == chain_hashes(text_blocks(turn, 16), 3)
    assert not first.array().flags.writeable  # one array, shared with the remembered segments
    assert calls == [22]
    following = turn[: 16 * 20] + rng.randbytes(16 * 9)  # shares its first five segments
    chained = memo.chain(following, 16, 3)
    assert chained == chain_hashes(text_blocks(following, 16), 3)
    assert chained.array().tolist() == chained
    assert calls == [22, 9]
    assert len(memo) == 6 + 3


def test_the_memo_stays_within_its_capacity_and_keeps_the_most_recent_segments() -> None:
    memo = ChainMemo(segment_blocks=1, capacity=32)
    rng = random.Random(11)
    prompts = [rng.randbytes(16 * 20) for _ in range(5)]
    for data in prompts:
        memo.chain(data, 16, 0)
        assert len(memo) <= 32
    last = prompts[-1]
    memo.chain(b"", 16, 0)  # forget the whole-prompt shortcut
    assert memo.chain(last[: 16 * 20], 16, 0) == chain_hashes(text_blocks(last, 16), 0)
