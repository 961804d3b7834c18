"""Replication of a prefix index between active-active picker replicas through a Redis (or Valkey) stream.

The index itself (``epp.scheduling.prefix.replicated.ReplicatedPrefixIndex``) is pure: picks apply
locally and queue an entry; this module is the transport the data layer starts and stops for it.

* Stream entries are ``{r: replica id, e: endpoint name, h: hashes as little-endian uint64}``,
  appended with ``XADD MAXLEN ~ max_len``: Redis memory is bounded and a replica that starts later
  catches up from what the stream still holds.
* Redis is never on the pick path: a background task publishes queued entries in batches with one
  pipelined round trip, another follows the stream with ``XREAD BLOCK`` and hands others' entries to
  the index.
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
from collections.abc import Callable
from typing import cast

import redis.asyncio as redis
from prometheus_client import CollectorRegistry, Counter, Gauge
from redis.exceptions import RedisError

from epp.contracts.datalayer import ReplicaOutbox
from epp.scheduling.prefix.replicated import APPLIED

log = logging.getLogger(__name__)

_PUBLISH_BATCH = 256
_READ_COUNT = 512
_BLOCK_MS = 1000
_Entries = list[tuple[bytes, dict[bytes, bytes]]]  # stream entries as redis-py returns them


def _stream_id(raw: bytes | str) -> tuple[int, int]:
    ms, _, seq = (raw.decode() if isinstance(raw, bytes) else raw).partition("-")
    return int(ms), int(seq or 0)


class RedisReplicator:
    """Publishes ``outbox``'s entries to ``stream`` and applies the other replicas' (module docstring)."""

    def __init__(
        self,
        outbox: ReplicaOutbox,
        url: str,
        *,
        stream: str = "epp:prefix-index",
        max_len: int = 20_000,
        retry_interval: float = 1.0,
        wall_time: Callable[[], float] = time.time,
        registry: CollectorRegistry | None = None,
    ) -> None:
        if max_len < 1 or retry_interval <= 0:
            raise ValueError("max_len must be at least 1, retry_interval positive")
        self.outbox = outbox
        self.url = url
        self.stream = stream
        self.max_len = max_len
        self.retry_interval = retry_interval
        self._wall_time = wall_time
        self._last_id = "0-0"
        self._wake = asyncio.Event()
        self._client: redis.Redis[bytes] | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._entries: Counter | None = None
        self._errors: Counter | None = None
        self._lag: Gauge | None = None
        self._up: Gauge | None = None
        self._dropped_seen = 0
        if registry is not None:
            self.register_metrics(registry)
        outbox.watch(self._queued)

    def register_metrics(self, registry: CollectorRegistry) -> None:
        """Export this replicator's series to ``registry`` (once, before ``start``)."""
        self._entries = Counter("epp_prefix_shared_entries", "Shared prefix-index entries, by outcome.",
                                ["op"], registry=registry)  # fmt: skip
        self._errors = Counter("epp_prefix_shared_errors", "Failed Redis calls of the shared prefix index.",
                               ["op"], registry=registry)  # fmt: skip
        self._lag = Gauge("epp_prefix_shared_lag_seconds", "Age of the last shared entry applied.", registry=registry)
        self._up = Gauge("epp_prefix_shared_connected", "1 while the shared prefix index reaches Redis.", registry=registry)

    # -- lifecycle --------------------------------------------------------------------------------
    async def start(self) -> None:
        if self._client is not None:
            raise RuntimeError("RedisReplicator can be started once")
        timeout = _BLOCK_MS / 1000 + max(2.0, self.retry_interval)
        self._client = redis.Redis.from_url(self.url, socket_timeout=timeout, socket_connect_timeout=timeout)
        loop = asyncio.get_running_loop()
        self._tasks = [
            loop.create_task(self._publish_loop(), name="prefix-shared:publish"),
            loop.create_task(self._read_loop(), name="prefix-shared:read"),
        ]
        if self.outbox.pending:
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

    def _queued(self) -> None:
        self._count_dropped()
        self._wake.set()

    def _count_dropped(self) -> None:
        dropped = self.outbox.dropped
        if dropped != self._dropped_seen:
            self._count(self._entries, "dropped", dropped - self._dropped_seen)
            self._dropped_seen = dropped

    # -- replication ------------------------------------------------------------------------------
    async def _publish_loop(self) -> None:
        assert self._client is not None
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self.outbox.pending:
                batch = self.outbox.take(_PUBLISH_BATCH)
                try:
                    pipe = self._client.pipeline(transaction=False)
                    for endpoint, packed in batch:
                        fields: dict[str, str | bytes] = {"r": self.outbox.replica_id, "e": endpoint, "h": packed}
                        pipe.xadd(self.stream, fields, maxlen=self.max_len, approximate=True)
                    await pipe.execute()
                except (RedisError, OSError) as err:
                    self.outbox.restore(batch)
                    self._count_dropped()
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
        endpoint = fields.get(b"e", b"").decode(errors="replace")
        outcome = self.outbox.apply(fields.get(b"r", b""), endpoint, fields.get(b"h", b""))
        if outcome is None:
            return
        self._count(self._entries, outcome)
        if outcome == APPLIED and self._lag is not None:
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
