"""The contract between plugins that share state and the exchanges that move it."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

DEFAULT_PERIOD = 0.025
"""Seconds between two exchanges of shared state (serve's ``--shared-state-period``, replay's default)."""
DEFAULT_TTL = 1.0
"""Seconds a replica's state stays in use without being refreshed (then it is taken to be dead)."""

PeerExport = tuple[float, Mapping[str, Any]]
"""Another replica's latest export: (its age in seconds, the payload its plugin exported)."""


@runtime_checkable
class SharesState(Protocol):
    """A plugin with state worth sharing between replicas. Both methods run off the pick path, on the
    event loop (no locking needed) every exchange period."""

    def export_shared(self, now: float) -> Mapping[str, Any]:
        """This replica's own state as JSON-ready data (never what it imported from others)."""
        ...

    def import_shared(self, peers: Sequence[PeerExport], now: float) -> None:
        """The other live replicas' latest exports of this plugin (empty: none, or the store is
        unreachable: fall back to local state). Must tolerate malformed payloads."""
        ...


EVENT_LATENCY = 0.001
"""Seconds an event takes from one replica to the others (a PUBLISH through Redis on one network; replay
delivers events this late)."""


@runtime_checkable
class SharesEvents(SharesState, Protocol):
    """A sharing plugin some of whose changes the other replicas should hear at once, not a period later:
    a booking the others would otherwise not see for 25–50 ms — long enough at tens of picks a second for
    two replicas to send work to the same idle endpoint (``VirtualExchange``, ``RedisSharedState``). The
    exchange sets ``on_event`` and, when it is called (from the pick path: it must only schedule work),
    drains ``take_events`` and delivers them to the other replicas' ``import_events``."""

    on_event: Callable[[], None] | None

    def take_events(self) -> list[Any]:
        """The JSON-ready events queued since the last call (each about this replica's own state)."""
        ...

    def import_events(self, events: Sequence[Any], age: float, now: float) -> None:
        """Another replica's events, sent ``age`` seconds ago; must tolerate malformed ones."""
        ...


def participants(plugins: Iterable[object]) -> dict[str, SharesState]:
    """The plugins that share state, by instance name (replicas built from one config agree on names)."""
    found: dict[str, SharesState] = {}
    for plugin in plugins:
        if isinstance(plugin, SharesState):
            typed_name = getattr(plugin, "typed_name", None)
            found[str(getattr(typed_name, "name", type(plugin).__name__))] = plugin
    return found
