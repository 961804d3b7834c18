"""SGLang's cache-aware policy: the radix tree, the scorer, and the preset end to end."""

from __future__ import annotations

import random

from epp._util.clock import VirtualClock
from epp.datastore import Datastore
from epp.scheduling.framework import CycleState
from epp.scheduling.plugins.scorers.sglang_cache_aware import CacheAwareParams, SGLangCacheAwareScorer
from epp.scheduling.prefix.radix_tree import RadixTree
from epp.config.presets import build_preset
from tests.conftest import make_request, make_states


def test_tree_matches_shared_prefixes_and_counts_chars() -> None:
    tree = RadixTree(VirtualClock())
    tree.insert("hello world", "a")
    tree.insert("hello there", "b")
    assert tree.prefix_match("hello world!", ["a", "b"]) == (11, "a")
    assert tree.prefix_match("hello wx", ["a", "b"]) == (7, "a")  # partial node match counts
    assert tree.prefix_match("hello", ["a", "b"])[0] == 5
    assert tree.prefix_match("zzz", ["a", "b"]) == (0, None)
    assert tree.tenant_chars == {"a": 11, "b": 11}
    assert tree.prefix_match("hello world", ["b"]) == (6, "b")  # only candidates count: walk up
    assert tree.smallest_tenants(["a", "b", "c"]) == ["c"]


def test_tree_eviction_drops_least_recent_leaves_and_removal_forgets_a_tenant() -> None:
    clock = VirtualClock()
    tree = RadixTree(clock)
    tree.insert("aaaa1111", "a")
    clock.advance(1)
    tree.insert("aaaa2222", "a")
    tree.insert("aaaa3333", "b")
    tree.evict(8)
    assert tree.tenant_chars["a"] == 8
    assert tree.prefix_match("aaaa1111", ["a"])[0] == 4  # older branch gone
    assert tree.prefix_match("aaaa2222", ["a"])[0] == 8
    tree.remove_tenant("b")
    assert tree.prefix_match("aaaa3333", ["b"]) == (0, None)
    assert "b" not in tree.tenant_chars


def test_scorer_prefers_match_above_threshold_else_emptiest_tree() -> None:
    scorer = SGLangCacheAwareScorer(VirtualClock(), params=CacheAwareParams(cache_threshold=0.5))
    endpoints = make_states(3)
    tree = scorer.trees.setdefault("m", RadixTree(scorer.clock))
    tree.insert("x" * 100, "e0")
    tree.insert("y" * 10, "e1")
    assert scorer.score(CycleState(), make_request(prompt=b"x" * 100 + b"z" * 50), endpoints) == [1.0, 0.0, 0.0]
    # 100 of 300 chars matched ≤ 0.5: the emptiest tree (e2 owns nothing) gets it
    assert scorer.score(CycleState(), make_request(prompt=b"x" * 100 + b"z" * 200), endpoints) == [0.0, 0.0, 1.0]
    assert scorer.score(CycleState(), make_request(prompt=b"x" * 100), endpoints[:2]) == [1.0, 0.0]
    assert scorer.score(CycleState(), make_request(prompt=b"q" * 10, model="other"), endpoints) == [1.0, 1.0, 1.0]


def test_preset_routes_by_cache_until_load_is_imbalanced() -> None:
    clock = VirtualClock()
    scheduler = build_preset("sglang-cache-aware", clock=clock, rng=random.Random(1))
    store = Datastore(clock)
    scheduler.attach(store)
    endpoints = make_states(4)
    for e in endpoints:
        store.upsert(e.endpoint)
    prompt = b"system prompt " * 40
    first = scheduler.schedule(make_request(prompt=prompt + b"one"), endpoints).endpoints[0]
    for i in range(5):
        again = scheduler.schedule(make_request(prompt=prompt + str(i).encode()), endpoints).endpoints[0]
        assert again is first
    first.inflight_requests = 100  # 100 - 0 > 64 and 100 > 1.5 × 0: shortest queue wins
    moved = scheduler.schedule(make_request(prompt=prompt + b"x"), endpoints).endpoints[0]
    assert moved is not first and moved.inflight_requests == 0
    store.remove(first.name)
    scorer = next(p for p in scheduler.plugins if isinstance(p, SGLangCacheAwareScorer))
    assert first.name not in scorer.trees["m"].tenant_chars
