"""Shared state between replay's picker replicas, in virtual time.

``epp replay --replicas N --shared-state`` calls ``tick`` every ``period`` seconds of virtual time.
At each tick every replica first reads what the others published at the *previous* tick, then
publishes its own: what a replica sees of another is between one and two periods old, as with
``RedisSharedState`` in ``epp serve`` (each replica writes then reads on its own period, so the worst
case is a write just after a peer's read). Payloads go through the same JSON encoding as over Redis,
so a plugin cannot depend on in-process objects. Deterministic: no randomness, replicas in order.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import orjson

from epp.shared.protocol import PeerExport, SharesState


class VirtualExchange:
    """``replicas[i]``: replica ``i``'s sharing plugins by name; ``ttl``: exports older than this are
    ignored (a replica that stopped publishing is dead)."""

    def __init__(self, replicas: Sequence[Mapping[str, SharesState]], period: float, ttl: float = 1.0) -> None:
        if period <= 0 or ttl <= 0:
            raise ValueError("shared-state period and ttl must be positive")
        self.replicas = list(replicas)
        self.period = period
        self.ttl = ttl
        self._board: dict[int, tuple[float, bytes]] = {}
        self.ticks = 0

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
