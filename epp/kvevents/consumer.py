"""Which scheduler plugins consume engines' KV-cache events, and where a feed delivers them.

In ``epp serve`` a consuming plugin owns its ZMQ subscriber and nobody else needs to know. A driver
that *is* the engines — offline replay, whose simulated engines publish in virtual time — has to find
the consumers itself: it asks ``kv_event_sinks(scheduler.plugins)`` once per run. The seam is
structural, so a plugin opts in by exposing the sink it feeds as ``precise`` (the
``precise-prefix-cache-producer`` does: its ``PreciseIndex``), and nothing has to inspect plugin
classes. Only engines with a consumer need to produce events (vLLM's ``--kv-events-config``), so a
driver enables them only when this finds one.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol, runtime_checkable

from epp.kvevents.subscriber import KVEventSink


@runtime_checkable
class KVEventConsumer(Protocol):
    """A scheduler plugin whose view is fed by engine KV-cache events delivered to ``precise``."""

    @property
    def precise(self) -> KVEventSink: ...


def kv_event_sinks(plugins: Iterable[object]) -> list[KVEventSink]:
    """The distinct sinks of the consumers among ``plugins``, in plugin order: a sink reached through
    several plugins (or several replicas sharing one view) is fed once, as one subscription would."""
    sinks: dict[int, KVEventSink] = {}
    for plugin in plugins:
        if isinstance(plugin, KVEventConsumer):
            sinks.setdefault(id(plugin.precise), plugin.precise)
    return list(sinks.values())
