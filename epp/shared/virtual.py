"""Shared state between replay's picker replicas, in virtual time.

``epp replay --replicas N --shared-state`` calls ``tick`` every ``period`` seconds of virtual time.
At each tick every replica first reads what the others published at the *previous* tick, then
publishes its own: what a replica sees of another is between one and two periods old, as with
``RedisSharedState`` in ``epp serve`` (each replica writes then reads on its own period, so the worst
case is a write just after a peer's read). Payloads go through the same JSON encoding as over Redis,
so a plugin cannot depend on in-process objects. Deterministic: no randomness, replicas in order.

Events (``SharesEvents``: a booking, a first token) go to the other replicas as they happen, as
``RedisSharedState`` publishes them: taken from the plugin when it signals one, delivered ``latency``
seconds later (``deliver``, which the replay driver calls before each event it processes).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping, Sequence
from functools import partial
from typing import Any

import orjson

from epp._util.clock import Clock
from epp.shared.protocol import EVENT_LATENCY, PeerExport, SharesEvents, SharesState


class VirtualExchange:
    """``replicas[i]``: replica ``i``'s sharing plugins by name; ``ttl``: exports older than this are
    ignored (a replica that stopped publishing is dead); ``clock``: the replay's, when events are moved."""

    def __init__(self, replicas: Sequence[Mapping[str, SharesState]], period: float, ttl: float = 1.0,
                 clock: Clock | None = None, latency: float = EVENT_LATENCY) -> None:  # fmt: skip
        if period <= 0 or ttl <= 0 or latency < 0:
            raise ValueError("shared-state period and ttl must be positive, the event latency not negative")
        self.replicas = list(replicas)
        self.period = period
        self.ttl = ttl
        self.latency = latency
        self._board: dict[int, tuple[float, bytes]] = {}
        self.ticks = 0
        self.events = 0
        self._clock = clock
        self._in_flight: deque[tuple[float, int, str, bytes]] = deque()
        """Events sent and not yet delivered: (when due, sender, plugin name, payload), in sending order."""
        self._listeners: dict[str, list[tuple[int, SharesEvents]]] = {}
        for r, plugins in enumerate(self.replicas):
            for name, plugin in plugins.items():
                if clock is not None and isinstance(plugin, SharesEvents):
                    plugin.on_event = partial(self._send, r, name, plugin)
                    self._listeners.setdefault(name, []).append((r, plugin))

    def _send(self, replica: int, name: str, plugin: SharesEvents) -> None:
        assert self._clock is not None
        events = plugin.take_events()
        if events:
            self._in_flight.append((self._clock.now() + self.latency, replica, name, orjson.dumps(events)))

    def deliver(self, now: float) -> None:
        """Hand the events due by ``now`` to the other replicas' plugins, each at the moment it is due."""
        in_flight = self._in_flight
        while in_flight and in_flight[0][0] <= now:
            due, sender, name, blob = in_flight.popleft()
            events = orjson.loads(blob)
            for r, plugin in self._listeners[name]:
                if r != sender:
                    plugin.import_events(events, self.latency, due)
            self.events += 1

    def tick(self, now: float) -> None:
        board = self._board
        decoded = {r: (t, orjson.loads(blob)) for r, (t, blob) in board.items() if now - t <= self.ttl}
        for r, plugins in enumerate(self.replicas):
            for name, plugin in plugins.items():
                peers: list[PeerExport] = [
                    (now - t, payload[name]) for q, (t, payload) in decoded.items() if q != r and name in payload
                ]
                plugin.import_shared(peers, now)
        for r, plugins in enumerate(self.replicas):
            exports: dict[str, Any] = {name: plugin.export_shared(now) for name, plugin in plugins.items()}
            board[r] = (now, orjson.dumps(exports))
        self.ticks += 1
