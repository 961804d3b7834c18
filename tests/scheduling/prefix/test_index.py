"""The approximate prefix index: match semantics, LRU eviction, purge, growth and memory bound."""

from __future__ import annotations

import random

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from epp._util.hashing import BlockHashes
from epp.datastore import Datastore, Endpoint
from epp.scheduling.prefix.index import BlockIndex


def chain(n: int, rng: random.Random) -> list[int]:
    return [rng.getrandbits(64) for _ in range(n)]


def test_match_counts_leading_blocks_per_endpoint() -> None:
    index = BlockIndex(100)
    index.add("a", [1, 2, 3, 4])
    index.add("b", [1, 2])
    assert index.match([1, 2, 3, 4, 5], ["a", "b", "c"]) == [4, 2, 0]
    assert index.match([9, 1, 2], ["a", "b"]) == [0, 0]  # walk stops at the first block nobody has
    assert index.match([], ["a"]) == [0]


def test_walk_continues_while_any_endpoint_has_the_block() -> None:
    index = BlockIndex(100)
    index.add("a", [1, 2])
    index.add("b", [1, 2, 3])
    index.add("a", [7, 7 + 1])  # unrelated
    assert index.match([1, 2, 3], ["a", "b"]) == [2, 3]


def test_exact_lru_with_small_capacity_evicts_oldest_and_keeps_prefixes() -> None:
    index = BlockIndex(4)
    index.add("a", [1, 2, 3])
    index.add("a", [10, 11])  # 5 distinct blocks for 4 slots: the prompt's last block goes first
    assert index.match([1, 2, 3], ["a"]) == [2]
    assert index.match([10, 11], ["a"]) == [2]
    index.add("a", [1])  # touch: 1 becomes most recent
    index.add("a", [20, 21])  # evicts 2 and then 11 (the oldest remaining)
    assert index.match([1, 2], ["a"]) == [1]
    assert index.match([10, 11], ["a"]) == [1]
    assert index.match([20, 21], ["a"]) == [2]
    assert index.entries() == 4


def test_generational_lru_holds_between_seven_eighths_and_all_of_capacity() -> None:
    rng = random.Random(1)
    index = BlockIndex(800)
    prompts = [chain(50, rng) for _ in range(40)]  # 2000 distinct blocks into a capacity of 800
    for p in prompts:
        index.add("a", p)
    assert 700 <= index.entries() <= 800
    held = [index.match(p, ["a"])[0] for p in prompts]
    assert held[-14:] == [50] * 14  # the most recent 700 blocks are all there
    assert held[:20] == [0] * 20  # the oldest are gone


def test_endpoints_have_separate_capacity() -> None:
    rng = random.Random(2)
    index = BlockIndex(16)
    quiet = chain(8, rng)
    index.add("quiet", quiet)
    for _ in range(20):
        index.add("busy", chain(8, rng))  # a busy endpoint churns only its own entries
    assert index.match(quiet, ["quiet"]) == [8]


def test_removed_endpoint_is_purged_through_the_datastore_and_its_slot_reused() -> None:
    index = BlockIndex(100)
    store = Datastore()
    store.add_listener(index)
    a, b = Endpoint("a", "10.0.0.1", 8000), Endpoint("b", "10.0.0.2", 8000)
    store.upsert(a)
    store.upsert(b)
    index.add("a", [1, 2, 3])
    index.add("b", [1, 2])
    store.remove("a")
    assert index.match([1, 2, 3], ["a", "b"]) == [0, 2]
    assert index.entries() == 2
    store.upsert(Endpoint("c", "10.0.0.3", 8000))  # takes a's old slot: nothing inherited
    assert index.match([1, 2, 3], ["c", "b"]) == [0, 2]


def test_growing_past_the_initial_endpoint_slots_keeps_entries() -> None:
    rng = random.Random(3)
    index = BlockIndex(64)
    prompts = {f"e{i}": chain(10, rng) for i in range(40)}  # 40 endpoints: grows 8 → 16 → 32 → 64 slots
    for name, p in prompts.items():
        index.add(name, p)
    names = list(prompts)
    for name, p in prompts.items():
        expected = [10 if n == name else 0 for n in names]
        assert index.match(p, names) == expected


def test_a_block_shared_by_many_endpoints_is_found_on_each() -> None:
    index = BlockIndex(100)
    names = [f"e{i}" for i in range(20)]
    for name in names:
        index.add(name, [42, 43])
    assert index.match([42, 43], names) == [2] * 20


@pytest.mark.parametrize("endpoints", [8, 9, 24])
def test_memory_per_cached_entry_is_bounded(endpoints: int) -> None:
    rng = random.Random(4)
    capacity = 2000
    index = BlockIndex(capacity)
    for i in range(endpoints):
        for _ in range(capacity * 5 // 4 // 250):
            index.add(f"e{i}", chain(250, rng))
    entries = index.entries()
    assert entries >= endpoints * capacity * 7 // 8
    # 9 endpoints sit just past a doubling of the endpoint slots (16): the worst case of the sizing.
    assert index.nbytes / entries <= 64


_PROMPTS = st.lists(st.integers(0, 2**64 - 1), min_size=1, max_size=12)
_OPS = st.lists(
    st.tuples(st.sampled_from(["match", "add", "add", "discard", "remove"]), st.integers(0, 5),
              st.sampled_from(["a", "b", "c"]), st.integers(0, 12), st.booleans()),
    max_size=40,
)


@settings(max_examples=150, deadline=None)
@given(bases=st.lists(_PROMPTS, min_size=1, max_size=3), ops=_OPS, capacity=st.integers(1, 12))
def test_reused_lookups_answer_and_change_the_table_as_fresh_ones(
    bases: list[list[int]], ops: list[tuple[str, int, str, int, bool]], capacity: int,
) -> None:
    """The index reuses its last lookup for equal hashes while the table is unchanged (a resent prompt):
    every answer and the whole table stay those of an index that looks every call up afresh."""
    memo, fresh = BlockIndex(capacity), BlockIndex(capacity)
    last: list[int] = []
    for op, base, endpoint, cut, same_object in ops:
        prompt = bases[base % len(bases)][: max(1, cut)]
        hashes = last if same_object and last[:1] else prompt  # the very list again, or an equal new one
        if not same_object:
            hashes = BlockHashes(prompt) if cut % 2 else list(prompt)
        last = hashes
        fresh._last = None  # no reuse at all
        if op == "match":
            assert memo.match(hashes, ["a", "b", "c"]) == fresh.match(list(hashes), ["a", "b", "c"])
        elif op == "add":
            memo.add(endpoint, hashes)
            fresh.add(endpoint, list(hashes))
        elif op == "discard":
            memo.discard(endpoint, hashes)
            fresh.discard(endpoint, list(hashes))
        else:
            memo.remove(endpoint)
            fresh.remove(endpoint)
        assert memo.entries() == fresh.entries()
    for a, b in ((memo._keys, fresh._keys), (memo._owners, fresh._owners), (memo._entry_gens, fresh._entry_gens)):
        assert np.array_equal(a, b)


def _place_as_before(index: BlockIndex) -> None:
    """``index._place`` as it was before it took the lookup's buckets, one owner for all and skipped the
    passes a round without live slots needs not (a per-key count of tries, buckets recomputed each round,
    owners compared)."""
    from epp.scheduling.prefix.index import WAYS, _tag

    def place(keys: np.ndarray, owners: np.ndarray | int, gens: np.ndarray, buckets: np.ndarray | None = None) -> None:
        if isinstance(owners, int):  # then: one array of the one owner
            owners = np.full(len(keys), owners, dtype=np.uint16)
        tries = np.zeros(len(keys), dtype=np.intp)
        while len(keys):
            buckets = (keys % index._buckets).astype(np.intp)
            hands = index._hands[buckets]
            chosen = buckets * WAYS + hands
            index._hands[buckets] = (hands + 1) % WAYS
            skip = index._live(index._owners[chosen], index._entry_gens[chosen]) & (tries < WAYS)
            write = ~skip
            chosen_w, keys_w, owners_w = chosen[write], keys[write], owners[write]
            index._keys[chosen_w] = keys_w
            index._tags[chosen_w] = _tag(keys_w)
            index._owners[chosen_w] = owners_w
            index._entry_gens[chosen_w] = gens[write]
            skip[write] = (index._keys[chosen_w] != keys_w) | (index._owners[chosen_w] != owners_w)
            keys, owners, gens, tries = keys[skip], owners[skip], gens[skip], tries[skip] + 1

    index._place = place  # type: ignore[method-assign]


_PLACE_OPS = st.lists(
    st.tuples(st.sampled_from(["match", "add", "add", "add", "discard", "remove"]), st.integers(0, 5),
              st.integers(0, 9), st.integers(1, 80)),
    max_size=40,
)


@settings(max_examples=200, deadline=None)
@given(bases=st.lists(st.lists(st.integers(0, 2**58), min_size=1, max_size=80), min_size=1, max_size=4),
       ops=_PLACE_OPS, capacity=st.sampled_from([1, 2, 3, 5, 12, 40]), one_bucket=st.booleans())
def test_placing_entries_leaves_the_table_it_left_before(
    bases: list[list[int]], ops: list[tuple[str, int, int, int]], capacity: int, one_bucket: bool,
) -> None:
    """Every table array, hand and generation counter stays what the former ``_place`` made of the same
    operations (small capacities: buckets get several keys, live slots under the hands; with
    ``one_bucket`` every key falls in one bucket, which fills with live entries and is overwritten after
    a bucket's worth of tries; ten endpoints: the table grows)."""
    index, before = BlockIndex(capacity), BlockIndex(capacity)
    _place_as_before(before)
    names = [f"e{i}" for i in range(10)]
    for op, base, endpoint, cut in ops:
        hashes = bases[base % len(bases)][:cut]
        if one_bucket:
            hashes = [h * int(index._buckets) % 2**64 for h in hashes]
        name = names[endpoint]
        if op == "match":
            assert index.match(hashes, names) == before.match(hashes, names)
        elif op == "add":
            index.add(name, hashes)
            before.add(name, hashes)
        elif op == "discard":
            index.discard(name, hashes)
            before.discard(name, hashes)
        else:
            index.remove(name)
            before.remove(name)
        for attr in ("_keys", "_tags", "_owners", "_entry_gens", "_hands", "_current", "_fill"):
            assert np.array_equal(getattr(index, attr), getattr(before, attr)), attr


def test_a_bucket_full_of_live_entries_is_overwritten_after_a_bucket_s_worth_of_tries_as_before() -> None:
    rng = random.Random(3)
    index, before = BlockIndex(40), BlockIndex(40)
    _place_as_before(before)
    aligned = [rng.getrandbits(58) * int(index._buckets) for _ in range(200)]  # all in bucket 0
    for name, keys in (("e0", aligned[:32]), ("e1", aligned[32:35]), ("e2", aligned[35:80]), ("e0", aligned[80:])):
        index.add(name, keys)
        before.add(name, keys)
        for attr in ("_keys", "_tags", "_owners", "_entry_gens", "_hands", "_current", "_fill"):
            assert np.array_equal(getattr(index, attr), getattr(before, attr)), attr
    assert index.match(aligned[32:35], ["e1"]) == before.match(aligned[32:35], ["e1"])
