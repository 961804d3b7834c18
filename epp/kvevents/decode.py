"""Engine KV-cache event messages (vLLM's ``ZmqEventPublisher``, SGLang's copy of it) → plain records.

A message is three ZMQ frames ``[topic, seq, payload]``: the topic (vLLM's default is the empty
string; llm-d's convention is ``kv@<host:port>@<model>``), an 8-byte big-endian sequence number
counting from 0 per publisher, and a msgpack batch ``[ts, [event, ...], data_parallel_rank?]`` (or
the same as a map ``{ts, events, data_parallel_rank}``). Events are msgspec tagged structs (vLLM
``vllm/distributed/kv_events.py``) in either encoding, read **by field name**:

* a map with a ``type`` tag — vLLM since vllm-project/vllm#42892 (2026-06) and current SGLang (whose
  ``BlockStored`` has ``block_hashes … lora_id, medium`` plus ``cache_salt`` and ``session_id``, and
  whose batch is ``[ts, events, attn_dp_rank]``)::

    {"type": "BlockStored", "block_hashes": [...], "parent_block_hash": h | None, "token_ids": [...],
     "block_size": 16, "lora_id": None, "medium": "GPU", "lora_name": None, "extra_keys": [...],
     "group_idx": 0, "kv_cache_spec_kind": "full_attention"}

* a tagged array, fields in declaration order (older vLLM/SGLang, llm-d's indexer)::

    ["BlockStored", block_hashes, parent_block_hash, token_ids, block_size, lora_id, medium, lora_name,
     extra_keys, group_idx, kv_cache_spec_kind, kv_cache_spec_sliding_window]
    ["BlockRemoved", block_hashes, medium, group_idx]
    ["AllBlocksCleared"]

Fields left at their default may be omitted (msgspec ``omit_defaults``; older engines lack the
trailing ones); unknown fields and unknown event types are ignored, so a newer engine's additions
never stop the feed. Block hashes are ints (vLLM's default) or 32-byte digests
(``VLLM_KV_EVENTS_USE_INT_BLOCK_HASHES=0``); both become unsigned 64-bit ints, a digest by its last 8
bytes big-endian — exactly vLLM's int form of the same hash. ``extra_keys`` (one entry per block: the
LoRA name, multimodal identifiers, ``cache_salt`` on the first block, prompt-embedding digests) enter
vLLM's block hash, so they are kept for the index to key blocks by
(``epp.scheduling.prefix.precise.keys.block_extras``).

Events are not filtered here: which KV-cache groups hold full-attention blocks is learned per feed
(``epp.contracts.kv_events.GroupFilter``). Anything malformed raises ``KVEventDecodeError``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import msgpack

from epp.contracts.kv_events import Cleared, ExtraKeys, KVEvent, Removed, Stored

TOPIC_PREFIX = "kv@"
TAG_KEY = "type"  # msgspec's default tag field
_U64 = (1 << 64) - 1

STORED_FIELDS = (
    "block_hashes", "parent_block_hash", "token_ids", "block_size", "lora_id", "medium", "lora_name",
    "extra_keys", "group_idx", "kv_cache_spec_kind", "kv_cache_spec_sliding_window",
)  # fmt: skip
REMOVED_FIELDS = ("block_hashes", "medium", "group_idx")
_FIELDS = {"BlockStored": STORED_FIELDS, "BlockRemoved": REMOVED_FIELDS, "AllBlocksCleared": ()}

class KVEventDecodeError(ValueError):
    """A message that is not a KV-event batch."""


@dataclass(frozen=True, slots=True)
class EventBatch:
    topic: str
    seq: int
    ts: float
    events: tuple[KVEvent, ...]
    dp_rank: int | None = None


@dataclass(frozen=True, slots=True)
class Topic:
    """``kv@<pod>@<model>``; parts are None when the topic does not follow the convention (vLLM's
    default topic is empty)."""

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
    return tuple([h & _U64 if type(h) is int else block_hash(h) for h in value])  # ints: no call per hash


def _optional_int(fields: Mapping[str, Any], name: str, default: int | None) -> int | None:
    value = fields.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int):
        raise KVEventDecodeError(f"{name} must be an int")
    return value


def _optional_str(fields: Mapping[str, Any], name: str) -> str | None:
    value = fields.get(name)
    if value is not None and not isinstance(value, str):
        raise KVEventDecodeError(f"{name} must be a string")
    return value


def _frozen(value: object) -> object:
    """msgpack arrays → tuples, recursively, so extra keys compare and hash by value."""
    return tuple(_frozen(v) for v in value) if isinstance(value, (list, tuple)) else value


def _extra_keys(value: object, blocks: int) -> tuple[ExtraKeys, ...] | None:
    if value is None:
        return None
    if not isinstance(value, list) or len(value) != blocks:
        raise KVEventDecodeError("extra_keys must be a list with one entry per block")
    out: list[ExtraKeys] = []
    for entry in value:
        if entry is not None and not isinstance(entry, list):
            raise KVEventDecodeError("each extra_keys entry must be an array or None")
        out.append(None if not entry else tuple(_frozen(v) for v in entry))
    return tuple(out) if any(e is not None for e in out) else None


def _stored(f: Mapping[str, Any]) -> Stored:
    if "block_hashes" not in f or "token_ids" not in f or "block_size" not in f:
        raise KVEventDecodeError("BlockStored needs block_hashes, token_ids and block_size")
    tokens, size = f["token_ids"], f["block_size"]
    if not isinstance(tokens, list) or isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise KVEventDecodeError("BlockStored needs token_ids and a positive block_size")
    hashes = _hashes(f["block_hashes"])
    parent = f.get("parent_block_hash")
    return Stored(
        block_hashes=hashes,
        parent_hash=None if parent is None else block_hash(parent),
        token_ids=tuple(tokens),
        block_size=size,
        lora_name=_optional_str(f, "lora_name"),
        extra_keys=_extra_keys(f.get("extra_keys"), len(hashes)),
        group_idx=_optional_int(f, "group_idx", 0) or 0,
        spec_kind=_optional_str(f, "kv_cache_spec_kind"),
        medium=_optional_str(f, "medium"),
        cache_salt=_optional_str(f, "cache_salt"),
    )


def _removed(f: Mapping[str, Any]) -> Removed:
    if "block_hashes" not in f:
        raise KVEventDecodeError("BlockRemoved needs block_hashes")
    return Removed(_hashes(f["block_hashes"]), _optional_int(f, "group_idx", 0) or 0, _optional_str(f, "medium"))


def _tagged(raw: object) -> tuple[str, Mapping[str, Any]]:
    """(tag, fields by name) of a tagged map or a tagged array."""
    if isinstance(raw, dict):
        tag = raw.get(TAG_KEY)
        if not isinstance(tag, str):
            raise KVEventDecodeError(f"an event map needs a string {TAG_KEY!r} tag")
        return tag, raw
    if isinstance(raw, list) and raw and isinstance(raw[0], str):
        tag = raw[0]
        return tag, dict(zip(_FIELDS.get(tag, ()), raw[1:], strict=False))
    raise KVEventDecodeError("an event must be a tagged map or a tagged array")


def decode_event(raw: object) -> KVEvent | None:
    """One event (a tagged map or array), or None for an event type this index does not use."""
    tag, fields = _tagged(raw)
    if tag == "BlockStored":
        return _stored(fields)
    if tag == "BlockRemoved":
        return _removed(fields)
    if tag == "AllBlocksCleared":
        return Cleared()
    return None


def _batch(payload: object) -> tuple[object, object, object]:
    """(ts, events, data_parallel_rank) of an array or map batch."""
    if isinstance(payload, list) and len(payload) >= 2:
        return payload[0], payload[1], payload[2] if len(payload) > 2 else None
    if isinstance(payload, dict) and "ts" in payload and "events" in payload:
        return payload["ts"], payload["events"], payload.get("data_parallel_rank")
    raise KVEventDecodeError("payload must be [ts, [events...], dp_rank?] or {ts, events, data_parallel_rank}")


def decode_payload(topic: str, seq: int, payload: bytes) -> EventBatch:
    """One msgpack batch (as published, or as vLLM's replay socket returns it) → ``EventBatch``."""
    try:
        unpacked = msgpack.unpackb(payload, raw=False, strict_map_key=False)
    except (UnicodeDecodeError, ValueError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError) as err:
        raise KVEventDecodeError(f"payload is not msgpack: {type(err).__name__} {err}".rstrip()) from None
    ts, raw_events, rank = _batch(unpacked)
    if isinstance(ts, bool) or not isinstance(ts, (int, float)):
        raise KVEventDecodeError("ts must be a number")
    if not isinstance(raw_events, list):
        raise KVEventDecodeError("events must be a list")
    if rank is not None and (isinstance(rank, bool) or not isinstance(rank, int)):
        raise KVEventDecodeError("data_parallel_rank must be an int")
    events = tuple([e for e in map(decode_event, raw_events) if e is not None])
    return EventBatch(topic, seq, float(ts), events, rank)


def decode_message(frames: Sequence[bytes]) -> EventBatch:
    """``[topic, seq, payload]`` → ``EventBatch``; raises ``KVEventDecodeError``."""
    if len(frames) != 3 or len(frames[1]) != 8:
        raise KVEventDecodeError("a message must be [topic, 8-byte seq, payload]")
    try:
        topic = frames[0].decode()
    except UnicodeDecodeError as err:
        raise KVEventDecodeError(f"topic is not UTF-8: {err}") from None
    return decode_payload(topic, int.from_bytes(frames[1], "big"), frames[2])
