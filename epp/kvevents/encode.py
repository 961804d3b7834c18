"""Engine-core KV-cache events → the wire message vLLM's (or SGLang's) ``ZmqEventPublisher`` sends:
the inverse of ``decode``. ``epp sim`` publishes it on ZMQ, and offline replay hands it to the same
decoder the data layer's subscriber uses, so encoding and decoding bugs show in replay as in production.

Each engine step's events go out as one multipart message ``[topic, seq, payload]``: the topic
(vLLM's default is empty; ``--kv-events-topic`` may name llm-d's ``kv@{host}:{port}@{model}``),
``seq`` an 8-byte big-endian counter from 0, ``payload`` msgpack. Three wire formats
(``WireFormat``), the first the default:

* ``vllm`` — vLLM ≥ 0.32 (vllm-project/vllm#42892): the batch ``[ts, [event, ...], dp_rank]``, events
  ``type``-tagged maps with every field a real vLLM sends (captured in
  ``tests/kvevents/data/vllm_events1.jsonl``)::

    {"type": "BlockStored", "block_hashes": [...], "parent_block_hash": None, "token_ids": [...],
     "block_size": 16, "lora_id": None, "medium": "GPU", "lora_name": None, "extra_keys": [None, ...],
     "group_idx": 0, "kv_cache_spec_kind": "full_attention"}
    {"type": "BlockRemoved", "block_hashes": [...], "medium": "GPU", "group_idx": 0}
    {"type": "AllBlocksCleared"}

  ``extra_keys`` holds, per block, what vLLM hashes besides the tokens: the LoRA name and, on a
  prompt's first block, its ``cache_salt``.
* ``sglang`` — current SGLang: ``[ts, [event, ...], attn_dp_rank]``, tagged maps with SGLang's fields
  (``block_hashes, parent_block_hash, token_ids, block_size, lora_id, medium`` and ``cache_salt`` when
  set; defaults omitted).
* ``array`` — older vLLM and SGLang: ``[ts, [event, ...]]`` with tagged arrays
  ``["BlockStored", hashes, parent, token_ids, block_size, lora_id, medium, lora_name]``,
  ``["BlockRemoved", hashes, medium]``, ``["AllBlocksCleared"]``.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from typing import Any

import msgpack

from epp.engine.block_pool import AllBlocksCleared, BlockRemoved, BlockStored, KVCacheEvent


class WireFormat(enum.Enum):
    VLLM = "vllm"
    SGLANG = "sglang"
    ARRAY = "array"


def default_topic(pod: str, model: str) -> str:
    """llm-d's convention, ``kv@<pod>@<model>``: subscribers filter on the ``kv@`` prefix."""
    return f"kv@{pod}@{model}"


def _extra_keys(event: BlockStored) -> list[list[str] | None]:
    """vLLM's per-block extra hash keys: the LoRA name on every block, the salt on the first."""
    out: list[list[str] | None] = []
    for i in range(len(event.block_hashes)):
        keys = [event.lora_name] if event.lora_name is not None else []
        if i == 0 and event.cache_salt:
            keys.append(event.cache_salt)
        out.append(keys or None)
    return out


def encode_event(event: KVCacheEvent, lora_ids: Mapping[str, int], wire: WireFormat = WireFormat.VLLM) -> Any:
    if isinstance(event, BlockStored):
        lora_id = lora_ids.get(event.lora_name) if event.lora_name is not None else None
        if wire is WireFormat.ARRAY:
            return ["BlockStored", list(event.block_hashes), event.parent_block_hash, list(event.token_ids),
                    event.block_size, lora_id, event.medium, event.lora_name]  # fmt: skip
        stored: dict[str, Any] = {
            "type": "BlockStored", "block_hashes": list(event.block_hashes),
            "parent_block_hash": event.parent_block_hash, "token_ids": list(event.token_ids),
            "block_size": event.block_size, "lora_id": lora_id, "medium": event.medium,
        }  # fmt: skip
        if wire is WireFormat.SGLANG:
            if event.cache_salt:
                stored["cache_salt"] = event.cache_salt
            return stored
        stored.update(lora_name=event.lora_name, extra_keys=_extra_keys(event), group_idx=0,
                      kv_cache_spec_kind="full_attention")  # fmt: skip
        return stored
    if isinstance(event, BlockRemoved):
        if wire is WireFormat.ARRAY:
            return ["BlockRemoved", list(event.block_hashes), event.medium]
        removed: dict[str, Any] = {"type": "BlockRemoved", "block_hashes": list(event.block_hashes), "medium": event.medium}
        if wire is WireFormat.VLLM:
            removed["group_idx"] = 0
        return removed
    if isinstance(event, AllBlocksCleared):
        return ["AllBlocksCleared"] if wire is WireFormat.ARRAY else {"type": "AllBlocksCleared"}
    raise TypeError(f"not a KV-cache event: {event!r}")


def encode_batch(
    ts: float, events: Sequence[KVCacheEvent], lora_ids: Mapping[str, int], wire: WireFormat = WireFormat.VLLM
) -> bytes:
    encoded = [encode_event(e, lora_ids, wire) for e in events]
    batch: list[Any] = [ts, encoded] if wire is WireFormat.ARRAY else [ts, encoded, 0 if wire is WireFormat.VLLM else None]
    payload: bytes = msgpack.packb(batch)
    return payload


def frames(
    topic: bytes, seq: int, ts: float, events: Sequence[KVCacheEvent], lora_ids: Mapping[str, int],
    wire: WireFormat = WireFormat.VLLM,
) -> list[bytes]:  # fmt: skip
    """One batch as the ZMQ multipart message the publisher sends: topic, 8-byte big-endian sequence
    number, msgpack payload."""
    return [topic, seq.to_bytes(8, "big"), encode_batch(ts, events, lora_ids, wire)]
