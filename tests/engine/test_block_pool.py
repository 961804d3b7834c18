from __future__ import annotations

import pytest

from epp.engine.block_pool import AllBlocksCleared, BlockPool, BlockRemoved, BlockStored


def test_block_zero_is_reserved_and_usage_counts_usable_blocks() -> None:
    pool = BlockPool(5)
    assert pool.num_usable_blocks == 4 and pool.num_free_blocks == 4
    blocks = pool.get_new_blocks(2)
    assert all(b.block_id != 0 for b in blocks)
    assert pool.usage() == pytest.approx(0.5)
    with pytest.raises(ValueError):
        pool.get_new_blocks(3)


def test_cached_free_blocks_are_evicted_oldest_first_and_emit_removed() -> None:
    pool = BlockPool(4, enable_events=True)
    a = pool.get_new_blocks(3)
    pool.cache_full_blocks(a, [11, 12, 13], 0, 3, list(range(6)), 2, None)
    stored = pool.take_events()
    assert stored == [BlockStored((11, 12, 13), None, tuple(range(6)), 2, None)]
    pool.free_blocks(reversed(a))  # tail first: 13 is evicted first
    assert pool.usage() == 0.0
    assert pool.get_cached_block(11) is a[0]
    pool.get_new_blocks(1)
    assert pool.get_cached_block(13) is None and pool.get_cached_block(11) is a[0]
    assert pool.take_events() == [BlockRemoved((13,))]


def test_touch_revives_a_free_cached_block() -> None:
    pool = BlockPool(3)
    (b,) = pool.get_new_blocks(1)
    pool.cache_full_blocks([b], [7], 0, 1, [1, 2], 2, None)
    pool.free_blocks([b])
    assert pool.num_free_blocks == 2
    pool.touch([pool.get_cached_block(7)])  # type: ignore[list-item]
    assert pool.num_free_blocks == 1 and b.ref_cnt == 1


def test_uncached_blocks_are_reused_before_cached_ones() -> None:
    pool = BlockPool(3)
    cached, plain = pool.get_new_blocks(2)
    pool.cache_full_blocks([cached], [5], 0, 1, [0, 0], 2, None)
    pool.free_blocks([cached, plain])
    (reused,) = pool.get_new_blocks(1)
    assert reused is plain and pool.get_cached_block(5) is cached


def test_duplicate_hash_keeps_first_block_and_events_split_runs() -> None:
    pool = BlockPool(6, enable_events=True)
    first = pool.get_new_blocks(1)
    pool.cache_full_blocks(first, [1], 0, 1, [0, 0], 2, None)
    second = pool.get_new_blocks(3)
    pool.cache_full_blocks(second, [1, 2, 3], 0, 3, [0, 0, 1, 1, 2, 2], 2, "lora-a")
    events = pool.take_events()
    assert events[1] == BlockStored((2, 3), 1, (1, 1, 2, 2), 2, "lora-a")
    assert second[0].block_hash is None and pool.get_cached_block(1) is first[0]


def test_reset_prefix_cache_only_when_idle() -> None:
    pool = BlockPool(3, enable_events=True)
    blocks = pool.get_new_blocks(1)
    pool.cache_full_blocks(blocks, [9], 0, 1, [0, 0], 2, None)
    assert not pool.reset_prefix_cache()
    pool.free_blocks(blocks)
    assert pool.reset_prefix_cache()
    assert pool.get_cached_block(9) is None
    assert pool.take_events()[-1] == AllBlocksCleared()


def test_caching_disabled_stores_nothing() -> None:
    pool = BlockPool(3, enable_caching=False, enable_events=True)
    blocks = pool.get_new_blocks(1)
    pool.cache_full_blocks(blocks, [9], 0, 1, [0, 0], 2, None)
    assert pool.get_cached_block(9) is None and pool.take_events() == []
