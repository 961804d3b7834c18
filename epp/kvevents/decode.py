"""Engine KV-cache event messages (vLLM's ``ZmqEventPublisher``, SGLang's copy of it) → plain records.

A message is three ZMQ frames ``[topic, seq, payload]``: the topic (llm-d's convention
``kv@<host:port>@<model>``), an 8-byte big-endian sequence number counting from 0 per publisher, and
a msgpack ``[ts, [event, ...], data_parallel_rank?]``. Events are msgspec ``array_like`` tagged
structs, fields in declaration order (vLLM ``vllm/distributed/kv_events.py``), trailing defaulted
fields omitted::

    ["BlockStored", block_hashes, parent_block_hash, token_ids, block_size, lora_id, medium, lora_name,
     extra_keys, group_idx, kv_cache_spec_kind, kv_cache_spec_sliding_window]
    ["BlockRemoved", block_hashes, medium, group_idx]
    ["AllBlocksCleared"]

Older engines send fewer trailing fields (no ``medium``/``lora_name``). Block hashes are ints or
(newer vLLM) bytes; both become unsigned 64-bit ints (bytes: their last 8, as llm-d does). Events of a
KV-cache group other than 0 (hybrid models' sliding-window groups) are skipped: full-attention blocks
are what prefix reuse needs. Anything malformed raises ``KVEventDecodeError``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import msgpack

TOPIC_PREFIX = "kv@"
_U64 = (1 << 64) - 1


class KVEventDecodeError(ValueError):
    """A message that is not a KV-event batch."""


@dataclass(frozen=True, slots=True)
class Stored:
    block_hashes: tuple[int, ...]
    parent_hash: int | None
    token_ids: tuple[int, ...]
    block_size: int
    lora_name: str | None


@dataclass(frozen=True, slots=True)
class Removed:
    block_hashes: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class Cleared:
    pass


KVEvent = Stored | Removed | Cleared


@dataclass(frozen=True, slots=True)
class EventBatch:
    topic: str
    seq: int
    ts: float
    events: tuple[KVEvent, ...]


@dataclass(frozen=True, slots=True)
class Topic:
    """``kv@<pod>@<model>``; parts are None when the topic does not follow the convention."""

    pod: str | None
    model: str | None


def parse_topic(topic: str) -> Topic:
    if not topic.startswith(TOPIC_PREFIX):
        return Topic(None, None)
    pod, sep, model = topic[len(TOPIC_PREFIX) :].partition("@")
    return Topic(pod or None, model if sep and model else None)


def block_hash(value: object) -> int:
    if isinstance(value, bool):
        raise KVEventDecodeError("a block hash must be an int or bytes")
    if isinstance(value, int):
        return value & _U64
    if isinstance(value, bytes) and value:
        return int.from_bytes(value[-8:], "big")
    raise KVEventDecodeError(f"a block hash must be an int or bytes, got {type(value).__name__}")


def _hashes(value: object) -> tuple[int, ...]:
    if not isinstance(value, list):
        raise KVEventDecodeError("block_hashes must be a list")
    return tuple(block_hash(h) for h in value)


def _group(fields: list[Any], index: int) -> int:
    group = fields[index] if len(fields) > index else None
    return 0 if group is None else int(group)


def decode_event(raw: object) -> KVEvent | None:
    """One event, or None for an event this index ignores (unknown tag, other KV-cache group)."""
    if not isinstance(raw, list) or not raw or not isinstance(raw[0], str):
        raise KVEventDecodeError("an event must be a tagged array")
    tag, fields = raw[0], raw[1:]
    try:
        if tag == "BlockStored":
            if len(fields) < 4:
                raise KVEventDecodeError("BlockStored has too few fields")
            if _group(fields, 8) != 0:
                return None
            tokens, size = fields[2], fields[3]
            if not isinstance(tokens, list) or not isinstance(size, int) or size < 1:
                raise KVEventDecodeError("BlockStored needs token_ids and a positive block_size")
            lora_name = fields[6] if len(fields) > 6 and isinstance(fields[6], str) else None
            parent = None if fields[1] is None else block_hash(fields[1])
            return Stored(_hashes(fields[0]), parent, tuple(tokens), size, lora_name)
        if tag == "BlockRemoved":
            if not fields:
                raise KVEventDecodeError("BlockRemoved has too few fields")
            return Removed(_hashes(fields[0])) if _group(fields, 2) == 0 else None
        if tag == "AllBlocksCleared":
            return Cleared()
    except (TypeError, ValueError) as err:
        if isinstance(err, KVEventDecodeError):
            raise
        raise KVEventDecodeError(f"bad {tag}: {err}") from None
    return None


def decode_message(frames: list[bytes]) -> EventBatch:
    """``[topic, seq, payload]`` → ``EventBatch``; raises ``KVEventDecodeError``."""
    if len(frames) != 3 or len(frames[1]) != 8:
        raise KVEventDecodeError("a message must be [topic, 8-byte seq, payload]")
    try:
        topic = frames[0].decode()
        payload = msgpack.unpackb(frames[2], raw=False, strict_map_key=False)
    except (UnicodeDecodeError, ValueError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError) as err:
        raise KVEventDecodeError(f"undecodable payload: {err}") from None
    if not isinstance(payload, list) or len(payload) < 2 or not isinstance(payload[1], list):
        raise KVEventDecodeError("payload must be [ts, [events...]]")
    ts = payload[0]
    if isinstance(ts, bool) or not isinstance(ts, (int, float)):
        raise KVEventDecodeError("ts must be a number")
    events = tuple(e for e in (decode_event(raw) for raw in payload[1]) if e is not None)
    return EventBatch(topic, int.from_bytes(frames[1], "big"), float(ts), events)
