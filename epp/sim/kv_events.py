"""KV-cache events on ZMQ, as vLLM's ``ZmqEventPublisher`` sends them.

Each engine step's events go out as one multipart message ``[topic, seq, payload]``: ``seq`` an
8-byte big-endian counter from 0, ``payload`` a msgpack ``EventBatch`` array ``[ts, [event, ...]]``.
Events are tagged arrays, the encoding of vLLM's ``array_like`` msgspec structs that llm-d's
kv-cache indexer decodes::

    ["BlockStored", [hash, ...], parent_hash | None, [token_id, ...], block_size, lora_id | None, "GPU",
     lora_name | None]
    ["BlockRemoved", [hash, ...], "GPU"]
    ["AllBlocksCleared"]

Like vLLM, the socket binds when the endpoint has a wildcard (``tcp://*:5557``) or is ipc/inproc,
and connects otherwise (to a subscriber that binds). Sends never block the engine: when the
high-water mark is reached the batch is dropped and counted, as a real PUB socket would drop it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import msgpack
import zmq

from epp.engine.block_pool import AllBlocksCleared, BlockRemoved, BlockStored, KVCacheEvent


def default_topic(pod: str, model: str) -> str:
    """llm-d's convention, ``kv@<pod>@<model>``: subscribers filter on the ``kv@`` prefix."""
    return f"kv@{pod}@{model}"


def encode_event(event: KVCacheEvent, lora_ids: Mapping[str, int]) -> list[Any]:
    if isinstance(event, BlockStored):
        lora_id = lora_ids.get(event.lora_name) if event.lora_name is not None else None
        return [
            "BlockStored",
            list(event.block_hashes),
            event.parent_block_hash,
            list(event.token_ids),
            event.block_size,
            lora_id,
            event.medium,
            event.lora_name,
        ]
    if isinstance(event, BlockRemoved):
        return ["BlockRemoved", list(event.block_hashes), event.medium]
    if isinstance(event, AllBlocksCleared):
        return ["AllBlocksCleared"]
    raise TypeError(f"not a KV-cache event: {event!r}")


def encode_batch(ts: float, events: Sequence[KVCacheEvent], lora_ids: Mapping[str, int]) -> bytes:
    payload: bytes = msgpack.packb([ts, [encode_event(e, lora_ids) for e in events]])
    return payload


def frames(topic: bytes, seq: int, ts: float, events: Sequence[KVCacheEvent], lora_ids: Mapping[str, int]) -> list[bytes]:
    """One batch as the ZMQ multipart message vLLM's publisher sends: topic, 8-byte big-endian
    sequence number, msgpack payload."""
    return [topic, seq.to_bytes(8, "big"), encode_batch(ts, events, lora_ids)]


class KVEventPublisher:
    """Owns one PUB socket (and its own ZMQ context); ``close`` releases both."""

    def __init__(
        self,
        endpoint: str,
        topic: str,
        *,
        lora_ids: Mapping[str, int],
        wall_time: Callable[[], float],
        hwm: int = 100_000,
    ) -> None:
        self._ctx = zmq.Context()
        self._sock = self._ctx.socket(zmq.PUB)
        self._sock.set_hwm(hwm)
        self._sock.setsockopt(zmq.LINGER, 0)
        try:
            if "*" in endpoint or "::" in endpoint or endpoint.startswith(("ipc://", "inproc://")):
                self._sock.bind(endpoint)
            else:
                self._sock.connect(endpoint)
        except zmq.ZMQError:
            self.close()
            raise
        self._topic = topic.encode()
        self._lora_ids = lora_ids
        self._wall_time = wall_time
        self._seq = 0
        self.dropped = 0

    @property
    def last_endpoint(self) -> str:
        return str(self._sock.getsockopt_string(zmq.LAST_ENDPOINT))

    def publish(self, events: Sequence[KVCacheEvent]) -> None:
        if not events:
            return
        message = frames(self._topic, self._seq, self._wall_time(), events, self._lora_ids)
        try:
            self._sock.send_multipart(message, flags=zmq.NOBLOCK)
        except zmq.Again:
            self.dropped += 1
        self._seq += 1

    def close(self) -> None:
        self._sock.close(linger=0)
        self._ctx.term()
