"""ZMQ SUB sockets that feed engine KV-cache events into a ``KVEventSink`` (the precise prefix index):
the data layer opens one ``KVEventSubscriber`` per ``KVEventFeed`` a plugin asked for.

Two topologies, as llm-d deploys them:

* ``connect`` (default; llm-d's per-pod subscribers): one SUB per datastore endpoint, connected to
  ``tcp://<endpoint address>:<events port>`` (engines run with ``--kv-events-config`` endpoint
  ``tcp://*:5557``, vLLM's default, which binds). The events port is ``port`` plus the endpoint's
  data-parallel rank (the ``-rank-<i>`` of its name: vLLM offsets each DP rank's publisher by its rank,
  and GIE names an endpoint per target port so), unless the endpoint's ``epp/kv-events-port`` label
  names its own (two engines on one host: ``--static-endpoints 10.0.0.1:8000@5557,10.0.0.1:8001@5558``
  or the endpoints file's labels). Membership is followed through the datastore-listener methods.
  A socket monitor reports the TCP connection, so a dead engine is known
  at once (``DISCONNECTED``); ZMQ reconnects by itself (every 100 ms backing off to 2 s while nothing
  listens, one TCP attempt at a time). Every picker replica subscribes to every engine, so replicas
  hold the same precise view without sharing it. The socket says whose events they are, so every
  topic is accepted by default: vLLM's default topic is empty.

  **Backfill.** An engine announces a block only when it computes it, so a subscriber that joins a
  running engine misses what is already cached. With ``replay_port`` (vLLM's ``--kv-events-config``
  ``replay_endpoint``, e.g. ``tcp://*:5558``; offset like the events port) each (re)connection first
  asks the engine's replay ROUTER for every batch it still buffers from the one after the last seen
  (vLLM's protocol: a DEALER sends ``[b"", seq as 8 bytes big-endian]``; the engine answers ``[b"",
  topic, seq, payload]`` per buffered batch and ``[b"", b"", -1, b""]`` at the end — SGLang the same
  without the topic frame), applies them in order — before any live batch — then drops the live
  batches the backfill already delivered. A sequence gap, or a restarted publisher seen after its
  first batches, is backfilled the same way before the batch after it is applied. An engine without
  a replay socket is given up on after ``replay_timeout`` (once per connection).
* ``bind``: one SUB bound to ``bind_endpoint`` that engines connect to; a batch's endpoint is the
  ``<host:port>`` of its topic ``kv@<host:port>@<model>``, matched against the endpoints' host:port.
  Batches from unknown publishers are dropped and counted. With several picker replicas an engine
  can publish to only one of them: use ``connect`` for active-active.

Receiving runs on the event loop and never blocks a pick: each message is one engine step's events,
and the loop yields every ``_YIELD_EVERY`` messages during a flood. A batch that cannot be decoded
marks the endpoint's feed ``undecodable`` and is warned about once per endpoint (again only after
the feed has recovered); the rest are counted. Series (only with a registry):
``epp_kv_events_batches_total{result}`` (in-order, baseline, gap, restart, overflow, undecodable,
unknown-endpoint; backfilled batches count as what they were) and ``epp_kv_events_connected{endpoint}``.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import re
from dataclasses import dataclass
from typing import Protocol

import zmq
import zmq.asyncio
from prometheus_client import CollectorRegistry, Counter, Gauge
from zmq.utils.monitor import parse_monitor_message

from epp.datastore import Endpoint
from epp.datastore.endpoint import KV_EVENTS_PORT_LABEL
from epp.kvevents.decode import (
    TOPIC_PREFIX,
    EventBatch,
    KVEventDecodeError,
    decode_message,
    parse_topic,
)
from epp.contracts.datalayer import DEFAULT_KV_EVENTS_PORT as DEFAULT_PORT
from epp.contracts.datalayer import SubscriberMode
from epp.contracts.kv_events import KVEventSink

log = logging.getLogger(__name__)

_RANK = re.compile(r"-rank-(\d+)$")
_END_SEQ = (-1).to_bytes(8, "big", signed=True)
_YIELD_EVERY = 64
_RECONNECT_IVL_MS = 100
_RECONNECT_IVL_MAX_MS = 2000
MAX_SOCKETS = 3 * 8192 + 64
"""ZMQ sockets this subscriber's context may open: three per connect-mode endpoint (SUB, its monitor
pair), so 8,192 endpoints; libzmq's default (1,023) stops at 340. Past it, or past the process's file
limit, an endpoint is left unsubscribed (warned once) and matched in the approximate fallback."""


def data_parallel_rank(endpoint: Endpoint) -> int:
    """The ``<i>`` of a ``<pod>-rank-<i>`` endpoint name (its index in the pool's target ports), else 0."""
    found = _RANK.search(endpoint.name)
    return int(found.group(1)) if found else 0


def labelled_port(endpoint: Endpoint) -> int | None:
    """The endpoint's ``epp/kv-events-port`` label, if it holds a TCP port."""
    text = endpoint.labels.get(KV_EVENTS_PORT_LABEL, "")
    return int(text) if text.isascii() and text.isdigit() and 0 < int(text) < 65536 else None


@dataclass(slots=True)
class _Follow:
    """One connect-mode subscription's position in its publisher's sequence."""

    last_seq: int | None = None
    skip_through: int | None = None  # live batches up to here were delivered by a backfill
    backfill_due: bool = True
    connected: bool = False
    topic: bytes = b""


class _State(enum.Enum):
    NEW = "new"
    RUNNING = "running"
    STOPPED = "stopped"


class KVEventSubscriber:
    """See the module docstring. ``start``/``stop`` once each; membership may arrive before start."""

    def __init__(
        self,
        sink: KVEventSink,
        mode: SubscriberMode = SubscriberMode.CONNECT,
        *,
        port: int = DEFAULT_PORT,
        bind_endpoint: str = f"tcp://*:{DEFAULT_PORT}",
        topic_filter: str | None = None,
        registry: CollectorRegistry | None = None,
        rank_offset: bool = True,
        replay_port: int | None = None,
        replay_timeout: float = 2.0,
    ) -> None:
        self._sink = sink
        self.mode = mode
        self._port = port
        self._rank_offset = rank_offset
        self._replay_port = replay_port
        self._replay_timeout = replay_timeout
        self._undecodable: set[str] = set()  # endpoints warned about since their feed last decoded
        self._bind_endpoint = bind_endpoint
        if topic_filter is None:  # a bound socket needs topics to tell engines apart; a connected one does not
            topic_filter = TOPIC_PREFIX if mode is SubscriberMode.BIND else ""
        self._filter = topic_filter.encode()
        self._endpoints: dict[str, Endpoint] = {}
        self._by_hostport: dict[str, str] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._retiring: set[asyncio.Task[None]] = set()  # cancelled, still closing their sockets
        self._ctx: zmq.asyncio.Context | None = None
        self._bound: zmq.asyncio.Socket | None = None
        self._state = _State.NEW
        self._warned_unsubscribed = False
        self._batches: Counter | None = None
        self._connected: Gauge | None = None
        if registry is not None:
            self.register_metrics(registry)

    def register_metrics(self, registry: CollectorRegistry) -> None:
        """Export this subscriber's series to ``registry`` (once, before ``start``)."""
        self._batches = Counter(
            "epp_kv_events_batches", "KV-event batches received, by what their sequence number said.",
            ["result"], registry=registry,
        )
        self._connected = Gauge(
            "epp_kv_events_connected", "1 while the KV-event subscription to an endpoint is connected.",
            ["endpoint"], registry=registry,
        )

    # -- lifecycle --------------------------------------------------------------------------------
    async def start(self) -> None:
        if self._state is not _State.NEW:
            raise RuntimeError(f"KVEventSubscriber is {self._state.value}; it can be started once")
        self._ctx = zmq.asyncio.Context()
        self._ctx.set(zmq.MAX_SOCKETS, MAX_SOCKETS)
        self._state = _State.RUNNING
        if self.mode is SubscriberMode.BIND:
            self._bound = self._socket()
            try:
                self._bound.bind(self._bind_endpoint)
            except zmq.ZMQError:
                await self.stop()
                raise
            self._tasks[""] = asyncio.get_running_loop().create_task(self._receive_bound(self._bound), name="kv-events:bind")
        else:
            for endpoint in self._endpoints.values():
                self._follow(endpoint)

    async def stop(self) -> None:
        """Cancel the receivers and close every socket. Idempotent."""
        if self._state is _State.STOPPED:
            return
        self._state = _State.STOPPED
        tasks = [*self._tasks.values(), *self._retiring]
        self._tasks.clear()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._bound is not None:
            self._bound.close(linger=0)
        if self._ctx is not None:
            self._ctx.term()

    @property
    def bound_endpoint(self) -> str | None:
        """Where the bound socket listens (resolves a port 0), in ``bind`` mode once started."""
        if self._bound is None:
            return None
        return str(self._bound.getsockopt_string(zmq.LAST_ENDPOINT))

    def events_port(self, endpoint: Endpoint) -> int:
        """Where ``endpoint``'s engine publishes (connect mode): see the module docstring."""
        return (labelled_port(endpoint) or self._port) + (data_parallel_rank(endpoint) if self._rank_offset else 0)

    def replay_port(self, endpoint: Endpoint) -> int | None:
        """Where ``endpoint``'s engine answers replay requests: as far from its events port as
        ``replay_port`` is from ``port``."""
        if self._replay_port is None:
            return None
        return self.events_port(endpoint) + self._replay_port - self._port

    @property
    def endpoints(self) -> frozenset[str]:
        """Every endpoint of the pool this subscriber knows about."""
        return frozenset(self._endpoints)

    @property
    def following(self) -> frozenset[str]:
        """Endpoints with a connect-mode subscription task."""
        return frozenset(name for name in self._tasks if name)

    # -- DatastoreListener ----------------------------------------------------------------------
    def endpoint_added(self, endpoint: Endpoint) -> None:
        self._endpoints[endpoint.name] = endpoint
        self._by_hostport[endpoint.hostport] = endpoint.name
        if self._state is _State.RUNNING and self.mode is SubscriberMode.CONNECT:
            self._follow(endpoint)

    def endpoint_removed(self, endpoint: Endpoint) -> None:
        self._endpoints.pop(endpoint.name, None)
        if self._by_hostport.get(endpoint.hostport) == endpoint.name:
            del self._by_hostport[endpoint.hostport]
        task = self._tasks.pop(endpoint.name, None)
        if task is not None:
            task.cancel()
            self._retiring.add(task)
            task.add_done_callback(self._retiring.discard)
        if self._connected is not None:
            with contextlib.suppress(KeyError):
                self._connected.remove(endpoint.name)

    # -- receiving --------------------------------------------------------------------------------
    def _socket(self) -> zmq.asyncio.Socket:
        assert self._ctx is not None
        sock = self._ctx.socket(zmq.SUB)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.RECONNECT_IVL, _RECONNECT_IVL_MS)
        sock.setsockopt(zmq.RECONNECT_IVL_MAX, _RECONNECT_IVL_MAX_MS)
        sock.setsockopt(zmq.SUBSCRIBE, self._filter)
        return sock

    def _follow(self, endpoint: Endpoint) -> None:
        if endpoint.name not in self._tasks:
            self._tasks[endpoint.name] = asyncio.get_running_loop().create_task(
                self._receive_connected(endpoint), name=f"kv-events:{endpoint.name}"
            )

    async def _receive_connected(self, endpoint: Endpoint) -> None:
        try:
            sock = self._socket()
        except zmq.ZMQError as err:
            self._unsubscribed(endpoint, err)
            return
        try:
            monitor = sock.get_monitor_socket(zmq.EVENT_CONNECTED | zmq.EVENT_DISCONNECTED)
        except zmq.ZMQError as err:
            sock.close(linger=0)
            self._unsubscribed(endpoint, err)
            return
        host = f"[{endpoint.address}]" if ":" in endpoint.address else endpoint.address
        self._set_connected(endpoint.name, False)
        follow = _Follow()
        try:
            sock.connect(f"tcp://{host}:{self.events_port(endpoint)}")
            watcher = asyncio.get_running_loop().create_task(self._watch(monitor, endpoint.name, follow))
            try:
                replay = self.replay_port(endpoint)
                if replay is None:
                    await self._receive(sock, lambda pod: endpoint.name, follow)
                else:
                    await self._receive_replaying(sock, endpoint, f"tcp://{host}:{replay}", follow)
            finally:
                watcher.cancel()
                await asyncio.gather(watcher, return_exceptions=True)
        finally:
            sock.disable_monitor()
            monitor.close(linger=0)
            sock.close(linger=0)

    def _unsubscribed(self, endpoint: Endpoint, err: zmq.ZMQError) -> None:
        """No socket for ``endpoint`` (too many sockets or files): it stays NO_EVENTS, matched in the
        fallback. Warned once, not per endpoint: a large pool would otherwise flood the log."""
        if self._tasks.get(endpoint.name) is asyncio.current_task():
            del self._tasks[endpoint.name]
        if not self._warned_unsubscribed:
            self._warned_unsubscribed = True
            log.warning(
                "cannot subscribe to the KV events of endpoint %s (%s): it, and any other endpoint this"
                " happens to, is matched in the approximate prefix index; raise the file limit (ulimit -n)",
                endpoint.name, err,
            )

    async def _watch(self, monitor: zmq.asyncio.Socket, name: str, follow: _Follow) -> None:
        while True:
            event = parse_monitor_message(await monitor.recv_multipart())["event"]
            if event == zmq.EVENT_CONNECTED:
                self._set_connected(name, True)
                follow.connected = follow.backfill_due = True  # a (re)connection: batches may have gone by
            elif event == zmq.EVENT_DISCONNECTED:
                self._set_connected(name, False)
                follow.connected = False

    def _set_connected(self, name: str, connected: bool) -> None:
        if name in self._endpoints:
            self._sink.set_connected(name, connected)
            if self._connected is not None:
                self._connected.labels(endpoint=name).set(1 if connected else 0)

    async def _receive_bound(self, sock: zmq.asyncio.Socket) -> None:
        await self._receive(sock, lambda pod: self._by_hostport.get(pod) if pod else None, None)

    async def _receive(self, sock: zmq.asyncio.Socket, endpoint_of: _Resolver, follow: _Follow | None) -> None:
        received = 0
        while True:
            frames = await sock.recv_multipart()
            self._handle(frames, endpoint_of, follow)
            received += 1
            if received % _YIELD_EVERY == 0:
                await asyncio.sleep(0)

    async def _receive_replaying(
        self, sock: zmq.asyncio.Socket, endpoint: Endpoint, replay_url: str, follow: _Follow
    ) -> None:
        """``_receive`` with backfills: on each (re)connection — as soon as it is known, or at the
        latest before the first live batch after it is applied — and before a batch after a gap."""
        received = 0
        poll_ms = max(1, int(self._replay_timeout * 1000))
        name = endpoint.name
        while True:
            if follow.backfill_due and follow.connected:  # an idle engine: backfill without waiting for traffic
                await self._catch_up(name, replay_url, follow)
            if not await sock.poll(poll_ms):
                continue
            frames = await sock.recv_multipart()
            if follow.backfill_due:  # a live batch is proof of the connection: what came before it, first
                await self._catch_up(name, replay_url, follow)
            seq = int.from_bytes(frames[1], "big") if len(frames) == 3 and len(frames[1]) == 8 else None
            if seq is not None and follow.last_seq is not None and follow.skip_through is None:
                if seq > follow.last_seq + 1:  # a gap
                    await self._backfill(name, replay_url, follow, follow.last_seq + 1, seq)
                elif 0 < seq <= follow.last_seq:  # a restarted publisher, joined after its first batches
                    await self._backfill(name, replay_url, follow, 0, seq)
            self._handle(frames, lambda pod: name, follow)
            received += 1
            if received % _YIELD_EVERY == 0:
                await asyncio.sleep(0)

    async def _catch_up(self, name: str, url: str, follow: _Follow) -> None:
        """The (re)connection backfill: everything after the last batch seen (all, if none was)."""
        follow.backfill_due = False
        await self._backfill(name, url, follow, 0 if follow.last_seq is None else follow.last_seq + 1, None)

    async def _backfill(self, name: str, url: str, follow: _Follow, start: int, stop: int | None) -> None:
        """Ask the engine's replay socket for its buffered batches from ``start`` and apply those
        before ``stop`` (all of them when None: then the live batches they cover are skipped). Gives up
        after ``replay_timeout`` without an answer (an engine without ``replay_endpoint``)."""
        assert self._ctx is not None
        dealer = self._ctx.socket(zmq.DEALER)
        dealer.setsockopt(zmq.LINGER, 0)
        timeout_ms = max(1, int(self._replay_timeout * 1000))
        try:
            dealer.connect(url)
            await dealer.send_multipart([b"", start.to_bytes(8, "big")])
            while await dealer.poll(timeout_ms):
                reply = await dealer.recv_multipart()
                if len(reply) == 3:  # SGLang: [b"", seq, payload]
                    reply = [b"", follow.topic, *reply[1:]]
                if len(reply) != 4 or len(reply[2]) != 8 or reply[2] == _END_SEQ:
                    break
                seq = int.from_bytes(reply[2], "big")
                if seq < start or (stop is not None and seq >= stop):
                    continue
                self._handle(reply[1:], lambda pod: name, follow)
                if stop is None:
                    follow.skip_through = seq
            else:
                log.info("no KV-event replay from %s within %.1fs; continuing without a backfill", url, self._replay_timeout)
        except zmq.ZMQError as err:
            log.info("KV-event replay from %s failed (%s); continuing without a backfill", url, err)
        finally:
            dealer.close(linger=0)

    def _handle(self, frames: list[bytes], endpoint_of: _Resolver, follow: _Follow | None) -> None:
        topic = parse_topic(frames[0].decode(errors="replace")) if frames else parse_topic("")
        name = endpoint_of(topic.pod)
        if name is None or name not in self._endpoints:
            self._count("unknown-endpoint")
            return
        try:
            batch = decode_message(frames)
        except KVEventDecodeError as err:
            self._undecodable_batch(name, err)
            return
        if follow is not None:
            if follow.skip_through is not None:
                if batch.seq <= follow.skip_through:
                    return  # delivered by the backfill already
                follow.skip_through = None
            follow.last_seq = batch.seq
            follow.topic = frames[0]
        self._apply(name, batch, topic.model)

    def _apply(self, name: str, batch: EventBatch, model: str | None) -> None:
        if name in self._undecodable:
            self._undecodable.discard(name)
            log.info("KV events from endpoint %s decode again", name)
        self._count(self._sink.ingest(name, batch.seq, batch.events, model).value)

    def _undecodable_batch(self, name: str, err: KVEventDecodeError) -> None:
        """Mark the feed; warn once per endpoint (until it decodes again), count every batch."""
        self._sink.lost(name)
        self._count("undecodable")
        if name not in self._undecodable:
            self._undecodable.add(name)
            log.warning(
                "KV events from endpoint %s cannot be decoded (%s): its feed is 'undecodable' and it is"
                " matched in the approximate index; further undecodable batches are only counted"
                " (epp_kv_events_batches_total{result=\"undecodable\"}). Does the engine publish vLLM's or"
                " SGLang's msgpack event batches?",
                name, err,
            )

    def _count(self, result: str) -> None:
        if self._batches is not None:
            self._batches.labels(result=result).inc()


class _Resolver(Protocol):
    def __call__(self, pod: str | None) -> str | None: ...
