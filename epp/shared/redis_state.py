"""Shared state between active-active replicas of ``epp serve`` through Redis or Valkey.

Every ``period`` (default 25 ms) one background task makes one pipelined round trip:

* ``SET <prefix>:replica:<id> <export> PX <ttl>`` — this replica's export (``SharesState.export_shared``
  of every sharing plugin, with the wall time it was taken), alive for ``ttl`` (default 1 s): a replica
  that dies or loses Redis drops out of every view within ``ttl``, with no clean-up needed;
* ``SADD <prefix>:replicas <id>`` and ``SMEMBERS`` — who else is there (a replica seen for the first
  time is read at once, with a second round trip only then);
* ``MGET`` of the known peers' keys — their latest exports; a member whose key expired is dead and
  removed from the set (``SREM``, next round).

Events (``SharesEvents``: a booking, a first token) do not wait for the period: when a plugin signals
one, this replica PUBLISHes its plugins' pending events on ``<prefix>:events`` (fire-and-forget, at
the next turn of the event loop, never on the pick itself) and every replica's subscriber hands the
others' to its plugins (``import_events``) as they arrive — at 25 ms per exchange, replicas picking
tens of times a second would otherwise send work to the same idle endpoint unaware of each other.
Events lost while Redis is away are covered by the next export.

The peers' exports then go to the plugins (``import_shared``) with their age (wall time now minus the
time they were taken, clamped to [0, ttl]: replicas' clocks are assumed NTP-synchronised; skew only
shifts how far a peer's backlog is drained). So a replica sees another's state at most about one
period plus a round trip old, and a pick never waits for Redis.

When Redis is unreachable, the task warns once (``epp_shared_state_connected`` 0, errors counted),
keeps each peer's last export until it is ``ttl`` old, then routes on local state alone; it retries
every ``retry_interval`` and says so once when Redis is back. Stopping deletes this replica's key so
the others drop it at once.

Series (with a registry): ``epp_shared_state_connected``, ``epp_shared_state_peers``,
``epp_shared_state_peer_age_seconds`` (oldest export in use), ``epp_shared_state_exchanges_total``,
``epp_shared_state_errors_total``, ``epp_shared_state_rejected_total`` (peer exports that were not
valid JSON objects).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import socket
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import orjson
import redis.asyncio as redis
from prometheus_client import CollectorRegistry, Counter, Gauge
from redis.exceptions import RedisError

from epp._util.clock import Clock
from epp._util.lifecycle import AsyncService, cancel_and_wait
from epp.shared.protocol import DEFAULT_PERIOD, DEFAULT_TTL, PeerExport, SharesEvents, SharesState

log = logging.getLogger(__name__)


def replica_id() -> str:
    """Readable and unique: host (the pod's name in Kubernetes), process id and a random suffix."""
    return f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"


MAX_PUBLISHING = 64
"""Event messages being published at once; beyond, events are dropped (Redis is slow: the next export
covers them)."""


@dataclass(slots=True)
class _Peer:
    taken_at: float
    """Wall time the peer took its export."""
    received: float
    """This replica's clock when the export was read (how long it may still be used without Redis)."""
    exports: dict[str, Any]


class _Metrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.connected = Gauge("epp_shared_state_connected", "1 while shared state reaches Redis.", registry=registry)
        self.peers = Gauge("epp_shared_state_peers", "Other replicas whose shared state is in use.", registry=registry)
        self.age = Gauge("epp_shared_state_peer_age_seconds", "Age of the oldest peer state in use.", registry=registry)
        self.exchanges = Counter("epp_shared_state_exchanges", "Shared-state round trips.", registry=registry)
        self.errors = Counter("epp_shared_state_errors", "Failed shared-state round trips.", registry=registry)
        self.rejected = Counter("epp_shared_state_rejected", "Peer shared-state exports that could not be read.",
                                registry=registry)  # fmt: skip


class RedisSharedState(AsyncService):
    """Moves ``plugins``' shared state between replicas (module docstring). ``clock`` is the plugins'
    clock (what ``now`` means to them); ``wall_time`` stamps exports for other processes."""

    def __init__(
        self,
        url: str,
        plugins: Mapping[str, SharesState],
        clock: Clock,
        *,
        replica: str | None = None,
        prefix: str = "epp:shared",
        period: float = DEFAULT_PERIOD,
        ttl: float = DEFAULT_TTL,
        retry_interval: float = 1.0,
        wall_time: Callable[[], float] = time.time,
        registry: CollectorRegistry | None = None,
    ) -> None:
        if period <= 0 or ttl <= period or retry_interval <= 0:
            raise ValueError("shared state: period and retry interval must be positive, ttl longer than the period")
        self.url = url
        self.plugins = dict(plugins)
        self.clock = clock
        self.replica = replica or replica_id()
        self.prefix = prefix
        self.period = period
        self.ttl = ttl
        self.retry_interval = retry_interval
        self._wall_time = wall_time
        self._members_key = f"{prefix}:replicas"
        self._peers: dict[str, _Peer] = {}
        self._known: list[str] = []
        self._dead: list[str] = []
        self._client: redis.Redis[bytes] | None = None
        self._task: asyncio.Task[None] | None = None
        self.connected: bool | None = None
        """None before the first round trip, then whether the last one succeeded."""
        self._metrics = _Metrics(registry) if registry is not None else None
        self.channel = f"{prefix}:events"
        self._event_plugins = {name: p for name, p in self.plugins.items() if isinstance(p, SharesEvents)}
        self._listener: asyncio.Task[None] | None = None
        self._publishing: set[asyncio.Task[None]] = set()
        self._flush_pending = False
        self._event_failed = False

    def key(self, replica: str) -> str:
        return f"{self.prefix}:replica:{replica}"

    @property
    def peers(self) -> list[str]:
        """Replicas whose state is in use."""
        return sorted(self._peers)

    # -- lifecycle ---------------------------------------------------------------------------------
    async def start(self) -> None:
        if self._task is not None:
            raise RuntimeError("RedisSharedState can be started once")
        timeout = max(0.5, 4 * self.period)
        self._client = redis.Redis.from_url(self.url, socket_timeout=timeout, socket_connect_timeout=timeout)
        loop = asyncio.get_running_loop()
        self._task = loop.create_task(self._run(), name="shared-state")
        if self._event_plugins:
            self._listener = loop.create_task(self._listen(timeout), name="shared-state-events")
            for plugin in self._event_plugins.values():
                plugin.on_event = self._events_ready
        log.info("shared state: replica %s on %s every %.0f ms (ttl %.1f s, plugins %s)", self.replica,
                 self.prefix, self.period * 1000, self.ttl, ", ".join(sorted(self.plugins)) or "none")

    async def stop(self) -> None:
        """Stop exchanging and withdraw this replica's state (best effort). Idempotent."""
        for plugin in self._event_plugins.values():
            plugin.on_event = None
        task, self._task = self._task, None
        if task is not None:
            await cancel_and_wait(task)
        listener, self._listener = self._listener, None
        if listener is not None:
            await cancel_and_wait(listener)
        for publishing in list(self._publishing):
            await cancel_and_wait(publishing)
        client, self._client = self._client, None
        if client is not None:
            with contextlib.suppress(TimeoutError, RedisError, OSError):
                async with asyncio.timeout(0.5):
                    await client.pipeline(transaction=False).delete(self.key(self.replica)).srem(
                        self._members_key, self.replica).execute()  # fmt: skip
            with contextlib.suppress(RedisError, OSError):
                await client.aclose()  # type: ignore[attr-defined]  # types-redis 4.6 predates aclose

    async def _run(self) -> None:
        failing = False
        while self._task is not None:  # stop() clears it: redis-py may swallow a cancellation mid-call
            try:
                ok = await self.exchange()
                failing = False
            except Exception:  # a plugin's export or import failed: keep serving, say so once
                if not failing:
                    log.exception("shared state: exchange failed; retrying every %g s", self.retry_interval)
                failing, ok = True, False
            await asyncio.sleep(self.period if ok else self.retry_interval)

    # -- events ----------------------------------------------------------------------------------------
    def _events_ready(self) -> None:
        """A plugin queued an event (called on the pick path): publish at the next turn of the loop, once
        for all the events queued by then."""
        if not self._flush_pending:
            self._flush_pending = True
            asyncio.get_running_loop().call_soon(self._publish_events)

    def _publish_events(self) -> None:
        self._flush_pending = False
        events = {name: taken for name, plugin in self._event_plugins.items() if (taken := plugin.take_events())}
        client = self._client
        if not events or client is None or len(self._publishing) >= MAX_PUBLISHING:
            return
        blob = orjson.dumps({"t": self._wall_time(), "r": self.replica, "p": events})
        task = asyncio.get_running_loop().create_task(self._publish(client, blob))
        self._publishing.add(task)
        task.add_done_callback(self._publishing.discard)

    async def _publish(self, client: redis.Redis[bytes], blob: bytes) -> None:
        with contextlib.suppress(TimeoutError, RedisError, OSError):  # the exchange says when Redis is away
            await client.publish(self.channel, blob)

    async def _listen(self, timeout: float) -> None:
        """Subscribe to the others' events and hand them to the plugins; resubscribe after an error."""
        while True:
            client: redis.Redis[bytes] = redis.Redis.from_url(self.url, socket_connect_timeout=timeout)
            pubsub = client.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(self.channel)
                while True:
                    message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
                    if message is not None and message.get("type") == "message":
                        self._on_events(message["data"])
            except (TimeoutError, RedisError, OSError) as err:
                log.debug("shared state: event subscription lost (%s); resubscribing", err)
            finally:
                with contextlib.suppress(RedisError, OSError):
                    await pubsub.aclose()  # type: ignore[attr-defined]  # types-redis 4.6 predates aclose
                with contextlib.suppress(RedisError, OSError):
                    await client.aclose()  # type: ignore[attr-defined]  # types-redis 4.6 predates aclose
            await asyncio.sleep(self.retry_interval)

    def _on_events(self, raw: bytes) -> None:
        try:
            message = orjson.loads(raw)
            sender, taken_at, events = message["r"], float(message["t"]), message["p"]
            if not isinstance(events, dict):
                raise TypeError("events are not an object")
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as err:
            log.debug("shared state: unreadable events (%s)", err)
            if self._metrics is not None:
                self._metrics.rejected.inc()
            return
        if sender == self.replica:
            return
        age = min(self.ttl, max(0.0, self._wall_time() - taken_at))
        now = self.clock.now()
        for name, plugin in self._event_plugins.items():
            batch = events.get(name)
            if isinstance(batch, list):
                try:
                    plugin.import_events(batch, age, now)
                except Exception:  # a plugin's failure must not end the subscription: say so once
                    if not self._event_failed:
                        self._event_failed = True
                        log.exception("shared state: %s failed to import events", name)

    # -- one round -----------------------------------------------------------------------------------
    async def exchange(self) -> bool:
        """One round trip (publish, discover, read) and the plugins' import; False if Redis failed."""
        assert self._client is not None, "start() first"
        now = self.clock.now()
        exports = {name: plugin.export_shared(now) for name, plugin in self.plugins.items()}
        blob = orjson.dumps({"t": self._wall_time(), "p": exports})
        known, dead = self._known, self._dead
        try:
            pipe = self._client.pipeline(transaction=False)
            pipe.set(self.key(self.replica), blob, px=max(1, int(self.ttl * 1000)))
            pipe.sadd(self._members_key, self.replica)
            if dead:
                pipe.srem(self._members_key, *dead)
            pipe.smembers(self._members_key)
            if known:
                pipe.mget([self.key(r) for r in known])
            replies: list[Any] = await pipe.execute()
        except (TimeoutError, RedisError, OSError) as err:
            self._down(err)
            self._import(self.clock.now())
            return False
        self._up()
        self._dead = []
        received = self.clock.now()
        if known:
            for peer, raw in zip(known, replies[-1], strict=True):
                if raw is None:  # its key expired: dead (or cut off from Redis for a ttl)
                    self._peers.pop(peer, None)
                    self._dead.append(peer)
                else:
                    self._read(peer, raw, received)
        members = {m.decode(errors="replace") for m in (replies[-2] if known else replies[-1])} - {self.replica}
        joined = sorted(members - set(known) - set(self._dead))
        if joined:  # a replica that just joined (or this one just started): read it now, not a period later
            try:
                raws: list[bytes | None] = await self._client.mget([self.key(r) for r in joined])
            except (TimeoutError, RedisError, OSError) as err:
                self._down(err)
                raws = [None] * len(joined)
            for peer, raw in zip(joined, raws, strict=True):
                if raw is not None:
                    self._read(peer, raw, received)
        self._known = sorted(members - set(self._dead))
        self._import(received)
        return True

    def _read(self, peer: str, raw: bytes, received: float) -> None:
        try:
            message = orjson.loads(raw)
            taken_at = float(message["t"])
            exports = message["p"]
            if not isinstance(exports, dict):
                raise TypeError("exports are not an object")
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as err:
            log.debug("shared state: unreadable export from %s (%s)", peer, err)
            if self._metrics is not None:
                self._metrics.rejected.inc()
            return
        known = self._peers.get(peer)
        if known is not None and known.taken_at == taken_at:
            return  # unchanged since the last read: keep when it was first received
        self._peers[peer] = _Peer(taken_at, received, exports)

    def _import(self, now: float) -> None:
        """Hand every plugin the peers' exports that are younger than ``ttl``."""
        wall = self._wall_time()
        for peer in [p for p, s in self._peers.items() if now - s.received > self.ttl]:
            del self._peers[peer]  # not refreshed for a ttl (Redis away): its state is too old to use
        ages = {p: min(self.ttl, max(0.0, wall - s.taken_at)) for p, s in self._peers.items()}
        for name, plugin in self.plugins.items():
            peers: list[PeerExport] = [
                (ages[p], s.exports[name]) for p, s in self._peers.items() if isinstance(s.exports.get(name), dict)
            ]
            plugin.import_shared(peers, now)
        if self._metrics is not None:
            self._metrics.peers.set(len(self._peers))
            self._metrics.age.set(max(ages.values(), default=0.0))

    def _down(self, err: BaseException) -> None:
        if self.connected is not False:
            log.warning("shared state: Redis at %s unreachable (%s); routing on this replica's own state until "
                        "it returns (retrying every %g s)", self.url, err or type(err).__name__, self.retry_interval)
        self.connected = False
        if self._metrics is not None:
            self._metrics.connected.set(0)
            self._metrics.errors.inc()

    def _up(self) -> None:
        if self.connected is False:
            log.warning("shared state: Redis at %s is back; sharing state again", self.url)
        self.connected = True
        if self._metrics is not None:
            self._metrics.connected.set(1)
            self._metrics.exchanges.inc()
