"""``ReplicatedPrefixIndex``: the pure half of a shared prefix index (its Redis transport is tested in
``tests/datalayer/test_shared_prefix.py``)."""

from __future__ import annotations

import numpy as np

from epp.datastore import Endpoint
from epp.scheduling.prefix.index import BlockIndex
from epp.scheduling.prefix.replicated import APPLIED, SKIPPED, ReplicatedPrefixIndex


def packed(hashes: list[int]) -> bytes:
    return np.asarray(hashes, dtype="<u8").tobytes()


def test_picks_apply_locally_and_queue_within_the_bound() -> None:
    index = ReplicatedPrefixIndex(BlockIndex(100), "a", queue_limit=2)
    woken: list[int] = []
    index.watch(lambda: woken.append(index.pending))
    index.endpoint_added(Endpoint("e1", "10.0.0.1", 8000))
    for tag in range(3):
        index.add("e1", [tag, tag + 10])
        assert index.match([tag, tag + 10], ["e1"]) == [2]  # local at once
    index.add("e1", [])  # nothing to share
    assert woken == [1, 2, 2] and index.pending == 2 and index.dropped == 1
    batch = index.take(10)
    assert batch == [("e1", packed([1, 11])), ("e1", packed([2, 12]))] and index.pending == 0
    index.add("e1", [3])
    assert index.restore(batch) == 1 and index.dropped == 2  # the bound holds when a batch comes back
    assert index.take(10) == [("e1", packed([2, 12])), ("e1", packed([3]))]


def test_remote_entries_apply_only_for_known_endpoints_and_never_our_own() -> None:
    index = ReplicatedPrefixIndex(BlockIndex(100), "a")
    index.endpoint_added(Endpoint("e1", "10.0.0.1", 8000))
    assert index.apply(b"a", "e1", packed([7])) is None
    assert index.apply(b"b", "e1", packed([7, 8])) == APPLIED
    assert index.match([7, 8], ["e1"]) == [2] and index.pending == 0  # applied, not re-published
    for endpoint, payload in (("e9", packed([7])), ("e1", b""), ("e1", b"\x01\x02\x03")):
        assert index.apply(b"b", endpoint, payload) == SKIPPED
    index.endpoint_removed(Endpoint("e1", "10.0.0.1", 8000))
    assert index.apply(b"b", "e1", packed([9])) == SKIPPED
