"""KV-cache events on ZMQ, as vLLM's (or SGLang's) ``ZmqEventPublisher`` sends them.

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

Like vLLM, the socket binds when the endpoint has a wildcard (``tcp://*:5557``) or is ipc/inproc,
and connects otherwise (to a subscriber that binds). Sends never block the engine: when the
high-water mark is reached the batch is dropped and counted, as a real PUB socket would drop it.
With a replay endpoint the last ``buffer_steps`` batches are kept and served to replay requests as
vLLM does (``serve_replay``; the reply frames of ``ReplayReply``).
"""

from __future__ import annotations

import enum
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import msgpack
import zmq

from epp.engine.block_pool import AllBlocksCleared, BlockRemoved, BlockStored, KVCacheEvent

END_SEQ = (-1).to_bytes(8, "big", signed=True)


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


class KVEventPublisher:
    """Owns one PUB socket, an optional replay ROUTER and its own ZMQ context; ``close`` releases them."""

    def __init__(
        self,
        endpoint: str,
        topic: str,
        *,
        lora_ids: Mapping[str, int],
        wall_time: Callable[[], float],
        wire: WireFormat = WireFormat.VLLM,
        replay_endpoint: str | None = None,
        buffer_steps: int = 10_000,
        hwm: int = 100_000,
    ) -> None:
        self._ctx = zmq.Context()
        self._sock = self._ctx.socket(zmq.PUB)
        self._sock.set_hwm(hwm)
        self._sock.setsockopt(zmq.LINGER, 0)
        self._replay: zmq.Socket[bytes] | None = None
        try:
            if "*" in endpoint or "::" in endpoint or endpoint.startswith(("ipc://", "inproc://")):
                self._sock.bind(endpoint)
            else:
                self._sock.connect(endpoint)
            if replay_endpoint is not None:
                self._replay = self._ctx.socket(zmq.ROUTER)
                self._replay.setsockopt(zmq.LINGER, 0)
                self._replay.bind(replay_endpoint)
        except zmq.ZMQError:
            self.close()
            raise
        self._topic = topic.encode()
        self._lora_ids = lora_ids
        self._wall_time = wall_time
        self._wire = wire
        self._buffer: deque[tuple[int, bytes]] = deque(maxlen=buffer_steps)
        self._seq = 0
        self.dropped = 0

    @property
    def last_endpoint(self) -> str:
        return str(self._sock.getsockopt_string(zmq.LAST_ENDPOINT))

    @property
    def replay_endpoint(self) -> str | None:
        return None if self._replay is None else str(self._replay.getsockopt_string(zmq.LAST_ENDPOINT))

    def publish(self, events: Sequence[KVCacheEvent]) -> None:
        if not events:
            return
        message = frames(self._topic, self._seq, self._wall_time(), events, self._lora_ids, self._wire)
        try:
            self._sock.send_multipart(message, flags=zmq.NOBLOCK)
        except zmq.Again:
            self.dropped += 1
        if self._replay is not None:
            self._buffer.append((self._seq, message[2]))
        self._seq += 1

    def serve_replay(self) -> int:
        """Answer every pending replay request (never blocks): each buffered batch from the requested
        sequence number on, then the end marker. vLLM's replies carry the topic (``[id, b"", topic, seq,
        payload]``, end ``[id, b"", b"", -1, b""]``); SGLang's do not. Returns the requests served."""
        served = 0
        while self._replay is not None and self._replay.poll(0):
            request = self._replay.recv_multipart()
            served += 1
            if len(request) != 3 or len(request[2]) != 8:
                continue  # vLLM logs and ignores a malformed request
            client, start = request[0], int.from_bytes(request[2], "big")
            head = [client, b""] if self._wire is WireFormat.SGLANG else [client, b"", self._topic]
            for seq, payload in list(self._buffer):
                if seq >= start:
                    self._replay.send_multipart([*head, seq.to_bytes(8, "big"), payload])
            end = [client, b""] if self._wire is WireFormat.SGLANG else [client, b"", b""]
            self._replay.send_multipart([*end, END_SEQ, b""])
        return served

    def close(self) -> None:
        self._sock.close(linger=0)
        if self._replay is not None:
            self._replay.close(linger=0)
        self._ctx.term()
