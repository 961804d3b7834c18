"""Decoding vLLM/SGLang KV-event messages, field order per vLLM's ``kv_events.py``."""

from __future__ import annotations

import msgpack
import pytest

from epp.engine.block_pool import AllBlocksCleared, BlockRemoved, BlockStored
from epp.kvevents.decode import (
    Cleared,
    KVEventDecodeError,
    Removed,
    Stored,
    Topic,
    decode_event,
    decode_message,
    parse_topic,
)
from epp.sim.kv_events import encode_batch


def frames(payload: object, seq: int = 7, topic: bytes = b"kv@10.0.0.1:8000@m") -> list[bytes]:
    return [topic, seq.to_bytes(8, "big"), msgpack.packb(payload)]


def test_the_simulators_batches_decode_to_the_same_events() -> None:
    events = [
        BlockStored((1, 2), None, tuple(range(32)), 16, "adapter"),
        BlockRemoved((1,)),
        AllBlocksCleared(),
    ]
    batch = decode_message([b"kv@h:1@m", (3).to_bytes(8, "big"), encode_batch(12.5, events, {"adapter": 1})])
    assert (batch.topic, batch.seq, batch.ts) == ("kv@h:1@m", 3, 12.5)
    assert batch.events == (Stored((1, 2), None, tuple(range(32)), 16, "adapter"), Removed((1,)), Cleared())


def test_every_vllm_field_and_the_older_short_forms() -> None:
    full = ["BlockStored", [5], 4, [9] * 16, 16, None, "GPU", None, [None], 0, "full_attention", None]
    assert decode_event(full) == Stored((5,), 4, (9,) * 16, 16, None)
    assert decode_event(["BlockStored", [5], None, [9] * 16, 16, None]) == Stored((5,), None, (9,) * 16, 16, None)
    assert decode_event(["BlockRemoved", [5, 6], "GPU", 0]) == Removed((5, 6))
    assert decode_event(["BlockRemoved", [5]]) == Removed((5,))
    with_batch_rank = frames([1.0, [["AllBlocksCleared"]], 2])
    assert decode_message(with_batch_rank).events == (Cleared(),)


def test_bytes_hashes_become_their_last_eight_bytes_and_ints_wrap_to_u64() -> None:
    sha = bytes(range(32))
    event = decode_event(["BlockRemoved", [sha, -1]])
    assert event == Removed((int.from_bytes(sha[-8:], "big"), (1 << 64) - 1))


def test_other_kv_cache_groups_and_unknown_tags_are_skipped() -> None:
    assert decode_event(["BlockStored", [5], None, [9] * 16, 16, None, "GPU", None, None, 1]) is None
    assert decode_event(["BlockRemoved", [5], "GPU", 1]) is None
    assert decode_event(["SomethingNew", 1, 2]) is None


@pytest.mark.parametrize(
    "message",
    [
        [b"kv@x", b"\0" * 8],  # two frames
        [b"kv@x", b"\0" * 4, msgpack.packb([1.0, []])],  # short seq
        [b"kv@x", b"\0" * 8, b"\xc1garbage"],  # not msgpack
        frames({"ts": 1}),  # not an array
        frames(["now", []]),  # ts not a number
        frames([1.0, [["BlockStored", [1]]]]),  # too few fields
        frames([1.0, [["BlockStored", [1], None, "tokens", 16]]]),  # token_ids not a list
        frames([1.0, [["BlockStored", [1], None, [], 0]]]),  # block size 0
        frames([1.0, [["BlockRemoved", ["x"]]]]),  # hash of the wrong type
        frames([1.0, [["BlockRemoved", [True]]]]),
        frames([1.0, [["BlockRemoved", [1], "GPU", "zero"]]]),  # group not an int
        frames([1.0, [[]]]),  # untagged
    ],
)
def test_malformed_messages_raise_a_decode_error(message: list[bytes]) -> None:
    with pytest.raises(KVEventDecodeError):
        decode_message(message)


def test_topics_follow_llm_ds_convention_or_yield_nothing() -> None:
    assert parse_topic("kv@10.0.0.1:8000@meta/llama") == Topic("10.0.0.1:8000", "meta/llama")
    assert parse_topic("kv@10.0.0.1:8000") == Topic("10.0.0.1:8000", None)
    assert parse_topic("other") == Topic(None, None)
