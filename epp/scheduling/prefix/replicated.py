"""A prefix index whose picks are shared by active-active picker replicas: the pure half.

Each replica keeps its own in-process ``PrefixIndex`` — lookups never leave the process, so a pick
costs no round trip. What one replica learns from its own picks (``add``) is applied locally and
queued as an entry ``(endpoint, hashes as little-endian uint64)``, at most ``queue_limit`` (the oldest
are dropped when the transport is away for long); entries other replicas published are applied to the
local index, except those about endpoints this replica does not know (membership differs for a
moment), so remote entries can never leak index slots. The transport — a Redis stream, with its
tasks, retries and series — is the data layer's (``epp.datalayer.shared_prefix``), which drains
this outbox (``ReplicaOutbox``); without it the index is simply local.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Sequence

import numpy as np

from epp.datastore import Endpoint
from epp.scheduling.prefix.protocol import PrefixIndex

APPLIED, SKIPPED = "applied", "skipped"


class ReplicatedPrefixIndex:
    """``PrefixIndex`` wrapping a local one and queueing its ``add`` calls for the other replicas."""

    def __init__(self, local: PrefixIndex, replica_id: str, *, queue_limit: int = 10_000) -> None:
        if queue_limit < 1:
            raise ValueError("queue_limit must be at least 1")
        self.local = local
        self.replica_id = replica_id
        self.queue_limit = queue_limit
        self.dropped = 0
        """Entries dropped unpublished because the queue was full."""
        self._me = replica_id.encode()
        self._queue: deque[tuple[str, bytes]] = deque()
        self._members: set[str] = set()
        self._watchers: list[Callable[[], None]] = []

    # -- ReplicaOutbox -----------------------------------------------------------------------------
    @property
    def pending(self) -> int:
        """Entries waiting to be published."""
        return len(self._queue)

    def watch(self, on_queued: Callable[[], None]) -> None:
        self._watchers.append(on_queued)
        if self._queue:
            on_queued()

    def take(self, limit: int) -> list[tuple[str, bytes]]:
        return [self._queue.popleft() for _ in range(min(len(self._queue), limit))]

    def restore(self, batch: Sequence[tuple[str, bytes]]) -> int:
        self._queue.extendleft(reversed(batch))
        return self._bound()

    def apply(self, replica: bytes, endpoint: str, packed: bytes) -> str | None:
        if replica == self._me:
            return None
        if endpoint not in self._members or not packed or len(packed) % 8:
            return SKIPPED
        self.local.add(endpoint, np.frombuffer(packed, dtype="<u8").tolist())
        return APPLIED

    def _bound(self) -> int:
        dropped = 0
        while len(self._queue) > self.queue_limit:
            self._queue.popleft()
            dropped += 1
        self.dropped += dropped
        return dropped

    # -- PrefixIndex -------------------------------------------------------------------------------
    def match(self, hashes: Sequence[int], endpoints: Sequence[str]) -> list[int]:
        return self.local.match(hashes, endpoints)

    def add(self, endpoint: str, hashes: Sequence[int]) -> None:
        self.local.add(endpoint, hashes)
        if not hashes:
            return
        self._queue.append((endpoint, np.asarray(hashes, dtype="<u8").tobytes()))
        self._bound()
        for wake in self._watchers:
            wake()

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
