"""One endpoint's view of its engine's cache, as the precise index holds it (``index.PreciseIndex``)."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from epp.contracts.kv_events import GroupFilter, Removed, Stored

if TYPE_CHECKING:
    from epp.scheduling.prefix.precise.agreement import Probe


@dataclass(slots=True)
class EndpointView:
    """Blocks held per key, the feed's position and trust, and the key-agreement probes watching it;
    ``bit`` is the endpoint's bit in the index's shared owner masks."""


    bit: int
    held: dict[int, int] = field(default_factory=dict)  # key → copies
    suspect: set[int] = field(default_factory=set)  # keys held before a gap, not confirmed since
    alias: dict[int, int] = field(default_factory=dict)  # engine hash → key, where they differ
    last_seq: int | None = None
    awaiting_since: float | None = None
    resync_until: float | None = None
    connected: bool | None = None  # None: unknown (a bound socket cannot tell per endpoint)
    model: str | None = None  # of the latest routed request: seeds root blocks of model-less topics
    agreed: set[str] = field(default_factory=set)  # prompt kinds whose blocks the engine reported: keys agree
    stores: int = 0  # Stored events ingested (probes look at whether any arrived since routing)
    misses: dict[str, int] = field(default_factory=dict)  # per kind: probes due while stores arrived, none theirs
    block_size: int | None = None  # of the latest Stored event (named in the mismatch warning)
    joined_at: float | None = None  # first batch seen was not the publisher's first: blocks may be unseen
    undecodable: bool = False  # the latest batch from this endpoint could not be decoded
    deferred: deque[Stored | Removed] = field(default_factory=deque)  # events waiting for a model to seed them
    deferred_blocks: int = 0
    probe_keys: dict[int, int] = field(default_factory=dict)  # key → probes watching it
    due: deque[Probe] = field(default_factory=deque)  # probes whose first token came, oldest first
    groups: GroupFilter = field(default_factory=GroupFilter)  # which KV-cache groups hold full attention
