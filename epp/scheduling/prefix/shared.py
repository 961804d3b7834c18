"""A prefix index shared by active-active picker replicas through a Redis (or Valkey) stream.

Each replica keeps its own in-process ``PrefixIndex`` — lookups never leave the process, so a pick
costs no Redis round trip. What one replica learns from its own picks (``add``) is appended to a
stream, and every replica applies the others' entries to its local index, so all of them see every
replica's routing instead of their own share of it. (Precise KV-event views need no sharing when
every replica subscribes to every engine; what drifts apart between replicas is the learned part.)

* Stream entries are ``{r: replica id, e: endpoint name, h: hashes as little-endian uint64}``,
  appended with ``XADD MAXLEN ~ max_len``: Redis memory is bounded and a replica that starts later
  catches up from what the stream still holds. Entries about endpoints this replica does not know
  (membership differs for a moment) are skipped, so remote entries can never leak index slots.
* Redis is never on the pick path: ``add`` applies locally and queues the entry (at most
  ``queue_limit``; the oldest are dropped when Redis is away for long); a background task publishes
  batches with one pipelined round trip, another follows the stream with ``XREAD BLOCK``.
* Losing Redis only stops the sharing: the local index keeps working, both tasks retry every
  ``retry_interval``, the queue flushes after reconnecting and reading resumes after the last entry
  applied (from the start when the stream was recreated, e.g. Redis restarted without persistence).

Series (only with a registry): ``epp_prefix_shared_entries_total{op}`` (published, applied,
dropped, skipped), ``epp_prefix_shared_errors_total{op}`` (publish, read),
``epp_prefix_shared_lag_seconds`` (age of the last applied entry by the stream id's Redis clock) and
``epp_prefix_shared_connected``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import cast

import numpy as np
import redis.asyncio as redis
from prometheus_client import CollectorRegistry, Counter, Gauge
from redis.exceptions import RedisError

from epp.datastore import Endpoint
from epp.scheduling.prefix.protocol import PrefixIndex

log = logging.getLogger(__name__)

_PUBLISH_BATCH = 256
_READ_COUNT = 512
_BLOCK_MS = 1000
_Entries = list[tuple[bytes, dict[bytes, bytes]]]  # stream entries as redis-py returns them


def _stream_id(raw: bytes | str) -> tuple[int, int]:
    ms, _, seq = (raw.decode() if isinstance(raw, bytes) else raw).partition("-")
    return int(ms), int(seq or 0)


class SharedPrefixIndex:
    """``PrefixIndex`` wrapping a local one and replicating its ``add`` calls (module docstring)."""

    def __init__(
        self,
        local: PrefixIndex,
        url: str,
        replica_id: str,
        *,
        stream: str = "epp:prefix-index",
        max_len: int = 20_000,
        queue_limit: int = 10_000,
        retry_interval: float = 1.0,
        wall_time: Callable[[], float] = time.time,
        registry: CollectorRegistry | None = None,
    ) -> None:
        if max_len < 1 or queue_limit < 1 or retry_interval <= 0:
            raise ValueError("max_len and queue_limit must be at least 1, retry_interval positive")
        self.local = local
        self.url = url
        self.replica_id = replica_id
        self.stream = stream
        self.max_len = max_len
        self.queue_limit = queue_limit
        self.retry_interval = retry_interval
        self._wall_time = wall_time
        self._me = replica_id.encode()
        self._queue: deque[tuple[str, bytes]] = deque()
        self._members: set[str] = set()
        self._last_id = "0-0"
        self._wake = asyncio.Event()
        self._client: redis.Redis[bytes] | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._entries: Counter | None = None
        self._errors: Counter | None = None
        self._lag: Gauge | None = None
        self._up: Gauge | None = None
        if registry is not None:
            self.register_metrics(registry)

    def register_metrics(self, registry: CollectorRegistry) -> None:
        """Export this index's series to ``registry`` (once, before ``start``)."""
        self._entries = Counter("epp_prefix_shared_entries", "Shared prefix-index entries, by outcome.",
                                ["op"], registry=registry)  # fmt: skip
        self._errors = Counter("epp_prefix_shared_errors", "Failed Redis calls of the shared prefix index.",
                               ["op"], registry=registry)  # fmt: skip
        self._lag = Gauge("epp_prefix_shared_lag_seconds", "Age of the last shared entry applied.", registry=registry)
        self._up = Gauge("epp_prefix_shared_connected", "1 while the shared prefix index reaches Redis.", registry=registry)

    # -- lifecycle --------------------------------------------------------------------------------
    async def start(self) -> None:
        if self._client is not None:
            raise RuntimeError("SharedPrefixIndex can be started once")
        timeout = _BLOCK_MS / 1000 + max(2.0, self.retry_interval)
        self._client = redis.Redis.from_url(self.url, socket_timeout=timeout, socket_connect_timeout=timeout)
        loop = asyncio.get_running_loop()
        self._tasks = [
            loop.create_task(self._publish_loop(), name="prefix-shared:publish"),
            loop.create_task(self._read_loop(), name="prefix-shared:read"),
        ]
        if self._queue:
            self._wake.set()

    async def stop(self) -> None:
        """Cancel both tasks and close the connections (queued entries are not flushed). Idempotent."""
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._client is not None:
            with contextlib.suppress(RedisError, OSError):
                await self._client.aclose()  # type: ignore[attr-defined]  # redis>=5 API; types-redis stops at 4.6

    @property
    def pending(self) -> int:
        """Entries waiting to be published."""
        return len(self._queue)

    # -- PrefixIndex ---------------------------------------------------------------------------
    def match(self, hashes: Sequence[int], endpoints: Sequence[str]) -> list[int]:
        return self.local.match(hashes, endpoints)

    def add(self, endpoint: str, hashes: Sequence[int]) -> None:
        self.local.add(endpoint, hashes)
        if not hashes:
            return
        self._queue.append((endpoint, np.asarray(hashes, dtype="<u8").tobytes()))
        if len(self._queue) > self.queue_limit:
            self._queue.popleft()
            self._count(self._entries, "dropped")
        self._wake.set()

    def discard(self, endpoint: str, hashes: Sequence[int]) -> None:
        """Local only: peers that already took the entry keep it until their LRU ages it out."""
        self.local.discard(endpoint, hashes)

    def remove(self, endpoint: str) -> None:
        self.local.remove(endpoint)

    def entries(self) -> int:
        return self.local.entries()

    def endpoint_added(self, endpoint: Endpoint) -> None:
        self._members.add(endpoint.name)
        self.local.endpoint_added(endpoint)

    def endpoint_removed(self, endpoint: Endpoint) -> None:
        self._members.discard(endpoint.name)
        self.local.endpoint_removed(endpoint)

    # -- replication ------------------------------------------------------------------------------
    async def _publish_loop(self) -> None:
        assert self._client is not None
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._queue:
                batch = [self._queue.popleft() for _ in range(min(len(self._queue), _PUBLISH_BATCH))]
                try:
                    pipe = self._client.pipeline(transaction=False)
                    for endpoint, packed in batch:
                        fields: dict[str, str | bytes] = {"r": self.replica_id, "e": endpoint, "h": packed}
                        pipe.xadd(self.stream, fields, maxlen=self.max_len, approximate=True)
                    await pipe.execute()
                except (RedisError, OSError) as err:
                    self._queue.extendleft(reversed(batch))
                    while len(self._queue) > self.queue_limit:
                        self._queue.popleft()
                        self._count(self._entries, "dropped")
                    self._failed("publish", err)
                    await asyncio.sleep(self.retry_interval)
                    continue
                self._count(self._entries, "published", len(batch))
                self._set_up(True)

    async def _read_loop(self) -> None:
        assert self._client is not None
        while True:
            try:
                await self._check_position()
                while True:
                    reply = cast(
                        "list[tuple[bytes, _Entries]] | None",
                        await self._client.xread({self.stream: self._last_id}, count=_READ_COUNT, block=_BLOCK_MS),
                    )
                    self._set_up(True)
                    for _stream, entries in reply or ():
                        for entry_id, fields in entries:
                            self._apply(entry_id, fields)
            except (RedisError, OSError) as err:
                self._failed("read", err)
                await asyncio.sleep(self.retry_interval)

    async def _check_position(self) -> None:
        """Read from the start when the stream is older than our position (Redis lost its data)."""
        assert self._client is not None
        newest = cast("_Entries", await self._client.xrevrange(self.stream, count=1))
        if not newest or _stream_id(newest[0][0]) < _stream_id(self._last_id):
            self._last_id = "0-0"

    def _apply(self, entry_id: bytes, fields: dict[bytes, bytes]) -> None:
        self._last_id = entry_id.decode()
        if fields.get(b"r") == self._me:
            return
        endpoint = fields.get(b"e", b"").decode(errors="replace")
        packed = fields.get(b"h", b"")
        if endpoint not in self._members or not packed or len(packed) % 8:
            self._count(self._entries, "skipped")
            return
        self.local.add(endpoint, np.frombuffer(packed, dtype="<u8").tolist())
        self._count(self._entries, "applied")
        if self._lag is not None:
            self._lag.set(max(0.0, self._wall_time() - _stream_id(entry_id)[0] / 1000))

    def _failed(self, op: str, err: Exception) -> None:
        log.warning("shared prefix index: Redis %s failed (%s); local index keeps working", op, err)
        self._count(self._errors, op)
        self._set_up(False)

    def _set_up(self, up: bool) -> None:
        if self._up is not None:
            self._up.set(1 if up else 0)

    @staticmethod
    def _count(counter: Counter | None, op: str, n: int = 1) -> None:
        if counter is not None:
            counter.labels(op=op).inc(n)
