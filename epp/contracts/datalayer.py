"""What scheduling plugins need from the data layer, declared at build time through their handle.

A plugin never owns a socket or a task. A factory that needs a feed records it on the handle's
``DataNeeds``: a KV-event subscription delivering batches to a sink it owns (``KVEventFeed``), an
index whose picks are replicated to other picker replicas (``SharedIndexFeed``), a tokenizer source
that should load off the pick path while serving, a plugin whose heavy pure work should leave the
event loop while serving (``Offloading``). The scheduler carries the record; the composition
root gives it to ``epp.datalayer.DataLayer``, which opens, starts and stops the I/O, while offline
replay reads the same record to feed the sinks from its simulated engines.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from epp._util.offload import Offloading
from epp.contracts.kv_events import KVEventView
from epp.tokenizer.protocol import BackgroundLoading

__all__ = [
    "DEFAULT_KV_EVENTS_PORT",
    "DataNeeds",
    "KVEventFeed",
    "ReplicaOutbox",
    "SharedIndexFeed",
    "SubscriberMode",
    "kv_event_views",
]

DEFAULT_KV_EVENTS_PORT = 5557
"""vLLM's default ``--kv-events-config`` publisher port (``tcp://*:5557``)."""


class SubscriberMode(enum.Enum):
    CONNECT = "connect"  # one SUB per endpoint, connected to the engine's publisher
    BIND = "bind"  # one bound SUB that engines connect to


@dataclass(frozen=True, slots=True)
class KVEventFeed:
    """A KV-event subscription: where engines publish (see ``epp.datalayer.kv_events``) and the view
    its batches are applied to."""

    view: KVEventView
    mode: SubscriberMode = SubscriberMode.CONNECT
    port: int = DEFAULT_KV_EVENTS_PORT
    bind_endpoint: str = f"tcp://*:{DEFAULT_KV_EVENTS_PORT}"
    topic_filter: str | None = None
    rank_offset: bool = True
    replay_port: int | None = None


class ReplicaOutbox(Protocol):
    """The pure half of a replicated prefix index (``epp.scheduling.prefix.replicated``): what the
    data layer's Redis replicator drains and applies."""

    replica_id: str
    dropped: int
    """Entries dropped unpublished so far (the queue is bounded)."""

    @property
    def pending(self) -> int:
        """Entries waiting to be published."""
        ...

    def take(self, limit: int) -> list[tuple[str, bytes]]:
        """Up to ``limit`` queued (endpoint, packed hashes) entries, oldest first."""
        ...

    def restore(self, batch: Sequence[tuple[str, bytes]]) -> int:
        """Put an unpublished batch back in front; returns how many old entries the bound dropped."""
        ...

    def apply(self, replica: bytes, endpoint: str, packed: bytes) -> str | None:
        """Apply another replica's entry; the outcome counted (``applied``/``skipped``), None for our own."""
        ...

    def watch(self, on_queued: Callable[[], None]) -> None:
        """Call ``on_queued`` whenever an entry is queued (the replicator wakes its publisher)."""
        ...


@dataclass(frozen=True, slots=True)
class SharedIndexFeed:
    """A prefix index replicated through a Redis (or Valkey) stream."""

    outbox: ReplicaOutbox
    url: str
    stream: str = "epp:prefix-index"
    max_len: int = 20_000


@dataclass(slots=True)
class DataNeeds:
    """Everything the plugins of one scheduler asked the data layer for, in the order asked."""

    kv_event_feeds: list[KVEventFeed] = field(default_factory=list)
    shared_indexes: list[SharedIndexFeed] = field(default_factory=list)
    tokenizer_sources: list[BackgroundLoading] = field(default_factory=list)
    offloading: list[Offloading] = field(default_factory=list)
    """Plugins whose heavy pure work (the rest of a new prompt's encoding) leaves the event loop while serving."""


def kv_event_views(needs: Iterable[DataNeeds]) -> list[KVEventView]:
    """The distinct views fed by KV events over ``needs``, in order: a view several plugins (or picker
    replicas) share is fed once, as one subscription would feed it."""
    views: dict[int, KVEventView] = {}
    for need in needs:
        for feed in need.kv_event_feeds:
            views.setdefault(id(feed.view), feed.view)
    return list(views.values())
