"""KV-cache events on ZMQ, as vLLM's (or SGLang's) ``ZmqEventPublisher`` sends them.

Each engine step's events go out as one multipart message in one of the engines' wire formats
(``epp.kvevents.encode``, the inverse of ``epp.kvevents.decode``).

Like vLLM, the socket binds when the endpoint has a wildcard (``tcp://*:5557``) or is ipc/inproc,
and connects otherwise (to a subscriber that binds). Sends never block the engine: when the
high-water mark is reached the batch is dropped and counted, as a real PUB socket would drop it.
With a replay endpoint the last ``buffer_steps`` batches are kept and served to replay requests as
vLLM does (``serve_replay``; the reply frames of ``ReplayReply``).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Mapping, Sequence

import zmq

from epp.engine.block_pool import KVCacheEvent
from epp.kvevents.encode import WireFormat, frames

END_SEQ = (-1).to_bytes(8, "big", signed=True)


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
