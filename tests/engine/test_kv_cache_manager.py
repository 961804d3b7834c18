from __future__ import annotations

from epp.engine.block_pool import BlockPool
from epp.engine.kv_cache_manager import KVCacheManager
from epp.engine.request import EngineRequest

BS = 4


def _req(rid: str, tokens: list[int]) -> EngineRequest:
    request = EngineRequest(rid, tokens, max_tokens=4, arrival_time=0.0)
    request.init_hashes(BS, seed=1)
    return request


def _manager(blocks: int = 16) -> KVCacheManager:
    return KVCacheManager(BlockPool(blocks), BS)


def test_prefix_hit_is_whole_blocks_and_leaves_the_last_token_to_recompute() -> None:
    kv = _manager()
    first = _req("a", list(range(12)))
    assert kv.allocate_slots(first, 12) is not None
    again = _req("b", list(range(12)))  # identical: 3 full blocks, but the last token is recomputed
    hits, tokens = kv.get_computed_blocks(again)
    assert tokens == 8 and len(hits) == 2
    longer = _req("c", list(range(13)))
    assert kv.get_computed_blocks(longer)[1] == 12
    other = _req("d", [99, *range(1, 13)])
    assert kv.get_computed_blocks(other) == ([], 0)


def test_allocate_returns_none_without_changing_anything_when_full() -> None:
    kv = _manager(blocks=4)  # 3 usable
    a = _req("a", list(range(8)))
    assert kv.allocate_slots(a, 8) is not None
    b = _req("b", [50 + i for i in range(8)])
    assert kv.allocate_slots(b, 8) is None
    assert kv.pool.num_free_blocks == 1 and "b" not in kv.req_to_blocks


def test_free_then_hit_revives_blocks_and_usage_follows() -> None:
    kv = _manager(blocks=5)
    a = _req("a", list(range(9)))
    kv.allocate_slots(a, 9)
    assert kv.usage() == 0.75
    kv.free(a)
    assert kv.usage() == 0.0
    b = _req("b", list(range(9)))
    hits, tokens = kv.get_computed_blocks(b)
    assert tokens == 8
    new = kv.allocate_slots(b, 1, hits)
    assert new is not None and len(new) == 1
    assert kv.usage() == 0.75


def test_prefix_queries_count_only_what_is_recorded() -> None:
    kv = _manager()
    kv.record_prefix_query(12, 8)
    kv.record_prefix_query(5, 0)
    assert (kv.prefix_cache_queries, kv.prefix_cache_hits) == (17, 8)
