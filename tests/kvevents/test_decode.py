"""Decoding KV-event messages as a real vLLM 0.32 sends them (captured fixtures, maps and arrays) and
the older tagged arrays, by field name."""

from __future__ import annotations

from collections import Counter
from typing import Any

import msgpack
import pytest

from epp.contracts.kv_events import Cleared, GroupFilter, Removed, Stored
from epp.engine.block_pool import AllBlocksCleared, BlockRemoved, BlockStored
from epp.kvevents.decode import (
    KVEventDecodeError,
    Topic,
    decode_event,
    decode_message,
    decode_payload,
    parse_topic,
)
from epp.kvevents.encode import WireFormat, encode_batch
from tests.kvevents.captures import frames as capture_frames
from tests.kvevents.captures import messages

CAPTURES = ("vllm_events1", "vllm_bytes_events", "eviction_events")


def frames(payload: object, seq: int = 7, topic: bytes = b"kv@10.0.0.1:8000@m") -> list[bytes]:
    return [topic, seq.to_bytes(8, "big"), msgpack.packb(payload)]


@pytest.mark.parametrize("capture", CAPTURES)
def test_every_captured_batch_decodes_the_same_as_map_or_as_array(capture: str) -> None:
    for message in messages(capture):
        as_map = decode_message(capture_frames(message, "map"))
        as_array = decode_message(capture_frames(message, "array"))
        assert as_map == as_array
        assert (as_map.seq, as_map.dp_rank, as_map.ts) == (message["seq"], 0, message["payload"][0])
        assert len(as_map.events) == len(message["payload"][1])


def test_the_captures_hold_every_event_kind() -> None:
    kinds = Counter(
        type(event).__name__
        for capture in CAPTURES
        for message in messages(capture)
        for event in decode_message(capture_frames(message)).events
    )
    assert kinds == {"Stored": 45, "Removed": 292, "Cleared": 1}


def test_a_captured_store_keeps_every_field_vllm_sends() -> None:
    first, _, third = (decode_message(capture_frames(m)) for m in messages("vllm_events1"))
    assert first.topic == "" and parse_topic(first.topic) == Topic(None, None)  # vLLM's default topic
    stored = first.events[0]
    assert isinstance(stored, Stored)
    assert len(stored.block_hashes) == 5 and len(stored.token_ids) == 5 * 128 and stored.token_ids[0] == 0
    assert (stored.parent_hash, stored.block_size, stored.lora_name, stored.extra_keys) == (None, 128, None, None)
    assert (stored.group_idx, stored.spec_kind, stored.medium) == (0, "full_attention", "GPU")
    child = third.events[0]
    assert isinstance(child, Stored) and child.parent_hash == stored.block_hashes[3]  # a continuation


def test_bytes_hashes_equal_the_int_hashes_of_the_same_blocks() -> None:
    """The same prompt, once with int hashes and once with 32-byte ones: the last 8 bytes big-endian
    are vLLM's int form, so both modes key blocks alike."""
    ints = decode_message(capture_frames(messages("vllm_events1")[0])).events[0]
    digests = decode_message(capture_frames(messages("vllm_bytes_events")[0])).events[0]
    raw = messages("vllm_bytes_events")[0]["payload"][1][0]["block_hashes"]
    assert isinstance(ints, Stored) and isinstance(digests, Stored)
    assert digests.block_hashes == ints.block_hashes
    assert digests.block_hashes[0] == int(raw[0][-16:], 16)
    assert decode_event(["BlockRemoved", [bytes(range(32)), -1]]) == Removed(
        (int.from_bytes(bytes(range(8, 32))[-8:], "big"), (1 << 64) - 1)
    )


def test_the_bytes_capture_clears_then_stores() -> None:
    batch = decode_message(capture_frames(messages("vllm_bytes_events")[1]))
    assert batch.topic == "kv@127.0.0.1:8002@tiny-llama"
    assert isinstance(batch.events[0], Cleared) and isinstance(batch.events[1], Stored)


def test_removals_under_eviction_name_their_medium_and_group() -> None:
    batch = decode_message(capture_frames(messages("eviction_events")[0]))
    removed = batch.events[0]
    assert isinstance(removed, Removed) and (removed.medium, removed.group_idx) == ("GPU", 0)
    assert removed.block_hashes == (1838088580714201297,)


@pytest.mark.parametrize("wire", list(WireFormat))
def test_the_simulators_batches_decode_to_the_same_events(wire: WireFormat) -> None:
    events = [
        BlockStored((1, 2), None, tuple(range(32)), 16, "adapter", cache_salt="s"),
        BlockRemoved((1,)),
        AllBlocksCleared(),
    ]
    batch = decode_message([b"kv@h:1@m", (3).to_bytes(8, "big"), encode_batch(12.5, events, {"adapter": 1}, wire)])
    assert (batch.topic, batch.seq, batch.ts) == ("kv@h:1@m", 3, 12.5)
    stored, removed, cleared = batch.events
    assert isinstance(stored, Stored) and isinstance(removed, Removed) and cleared == Cleared()
    assert (stored.block_hashes, stored.parent_hash, stored.token_ids, stored.block_size, stored.lora_name) == (
        (1, 2), None, tuple(range(32)), 16, None if wire is WireFormat.SGLANG else "adapter"
    )
    assert (removed.block_hashes, removed.medium, stored.medium) == ((1,), "GPU", "GPU")
    salt = {WireFormat.VLLM: (None, (("adapter", "s"), ("adapter",))), WireFormat.SGLANG: ("s", None),
            WireFormat.ARRAY: (None, None)}  # fmt: skip
    assert (stored.cache_salt, stored.extra_keys) == salt[wire]


def test_older_short_arrays_still_decode() -> None:
    full = ["BlockStored", [5], 4, [9] * 16, 16, None, "GPU", None, [None], 0, "full_attention", None]
    assert decode_event(full) == Stored((5,), 4, (9,) * 16, 16, None, None, 0, "full_attention", "GPU")
    assert decode_event(["BlockStored", [5], None, [9] * 16, 16, None]) == Stored((5,), None, (9,) * 16, 16, None)
    assert decode_event(["BlockRemoved", [5, 6], "GPU", 0]) == Removed((5, 6), 0, "GPU")
    assert decode_event(["BlockRemoved", [5]]) == Removed((5,))
    assert decode_message(frames([1.0, [["AllBlocksCleared"]], 2])).dp_rank == 2


def test_maps_are_read_by_name_and_unknown_fields_and_types_are_ignored() -> None:
    event = {
        "future_field": {"x": 1}, "token_ids": [1] * 32, "type": "BlockStored", "block_size": 16,
        "block_hashes": [7, 8], "lora_name": "sql", "extra_keys": [["sql", "salt"], ["sql", ["mm", 3]]],
    }  # fmt: skip
    assert decode_event(event) == Stored(
        (7, 8), None, (1,) * 32, 16, "sql", (("sql", "salt"), ("sql", ("mm", 3))), 0, None, None
    )
    assert decode_event({"type": "BlockStored", "block_hashes": [7], "token_ids": [1] * 16, "block_size": 16,
                         "extra_keys": [None]}).extra_keys is None  # fmt: skip
    sglang = {"type": "BlockStored", "block_hashes": [7], "parent_block_hash": None, "token_ids": [1] * 16,
              "block_size": 16, "lora_id": None, "medium": "CPU_PINNED", "cache_salt": "s", "session_id": "x"}  # fmt: skip
    assert decode_event(sglang) == Stored((7,), None, (1,) * 16, 16, None, medium="CPU_PINNED", cache_salt="s")
    assert decode_event({"type": "SomethingNew", "block_hashes": "whatever"}) is None
    assert decode_event(["SomethingNew", 1, 2]) is None


def test_a_map_batch_with_its_rank_decodes_too() -> None:
    payload = msgpack.packb({"ts": 2.5, "events": [{"type": "AllBlocksCleared"}], "data_parallel_rank": 1})
    batch = decode_payload("", 4, payload)
    assert (batch.ts, batch.events, batch.dp_rank, batch.seq) == (2.5, (Cleared(),), 1, 4)


def stored(group: int, kind: str | None) -> Stored:
    return Stored((1,), None, (0,) * 16, 16, None, group_idx=group, spec_kind=kind)


def test_only_full_attention_groups_pass_the_group_filter() -> None:
    groups = GroupFilter()
    assert groups.keep(stored(0, None)) and groups.keep(Removed((1,), 0))  # older engines: group 0
    assert not groups.keep(Removed((1,), 1))  # an undescribed group
    assert groups.keep(stored(1, "full_attention")) and groups.keep(Removed((1,), 1))
    assert not groups.keep(stored(0, "sliding_window")) and not groups.keep(Removed((1,), 0))
    assert groups.keep(Cleared())


BAD: list[Any] = [
    [b"kv@x", b"\0" * 8],  # two frames
    [b"kv@x", b"\0" * 4, msgpack.packb([1.0, []])],  # short seq
    [b"kv@x", b"\0" * 8, b"\xc1garbage"],  # not msgpack
    [b"\xff", b"\0" * 8, msgpack.packb([1.0, []])],  # topic not UTF-8
    frames({"ts": 1}),  # a map without events
    frames(["now", []]),  # ts not a number
    frames([1.0, {}]),  # events not a list
    frames([1.0, [], "rank"]),  # rank not an int
    frames([1.0, [["BlockStored", [1]]]]),  # too few fields
    frames([1.0, [{"type": "BlockStored", "block_hashes": [1], "block_size": 16}]]),  # no token_ids
    frames([1.0, [["BlockStored", [1], None, "tokens", 16]]]),  # token_ids not a list
    frames([1.0, [["BlockStored", [1], None, [], 0]]]),  # block size 0
    frames([1.0, [{"type": "BlockStored", "block_hashes": [1, 2], "token_ids": [], "block_size": 1,
                   "extra_keys": [None]}]]),  # fmt: skip  # one extra-keys entry for two blocks
    frames([1.0, [["BlockRemoved", ["x"]]]]),  # hash of the wrong type
    frames([1.0, [["BlockRemoved", [True]]]]),
    frames([1.0, [["BlockRemoved", [1], "GPU", "zero"]]]),  # group not an int
    frames([1.0, [{"type": "BlockRemoved", "block_hashes": [1], "medium": 3}]]),  # medium not a string
    frames([1.0, [{"block_hashes": [1]}]]),  # an untagged map
    frames([1.0, [[]]]),  # untagged
]


@pytest.mark.parametrize("message", BAD)
def test_malformed_messages_raise_a_decode_error(message: list[bytes]) -> None:
    with pytest.raises(KVEventDecodeError):
        decode_message(message)


def test_topics_follow_llm_ds_convention_or_yield_nothing() -> None:
    assert parse_topic("kv@10.0.0.1:8000@meta/llama") == Topic("10.0.0.1:8000", "meta/llama")
    assert parse_topic("kv@10.0.0.1:8000") == Topic("10.0.0.1:8000", None)
    assert parse_topic("other") == Topic(None, None)
    assert parse_topic("") == Topic(None, None)
