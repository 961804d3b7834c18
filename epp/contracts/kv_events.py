"""The vocabulary of engine KV-cache events, shared by the layers that decode, subscribe to and index them.

``epp.kvevents.decode`` turns wire messages into these records, the data layer's subscriber delivers
them to a ``KVEventSink``, and scheduling's precise prefix index (a sink) keys blocks by them and
reports each endpoint's ``FeedState``; the data layer exports those states as series. Nothing here does
I/O or imports another part of epp, so every one of those layers may depend on it.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Protocol

__all__ = [
    "CHAT",
    "COMPLETION",
    "FULL_ATTENTION_KINDS",
    "PROMPT_KINDS",
    "Cleared",
    "ExtraKeys",
    "FeedState",
    "GroupFilter",
    "KVEvent",
    "KVEventSink",
    "KVEventView",
    "KeyAgreement",
    "Removed",
    "SeqCheck",
    "Stored",
]

FULL_ATTENTION_KINDS = frozenset({"full_attention", "mla_attention"})
"""``kv_cache_spec_kind`` values whose blocks hold a whole prefix (sliding-window, Mamba and
chunked-local groups keep only a suffix, useless for prefix reuse)."""

ExtraKeys = tuple[object, ...] | None
"""One block's extra hash keys as vLLM sends them (arrays become tuples), or None."""


@dataclass(frozen=True, slots=True)
class Stored:
    block_hashes: tuple[int, ...]
    parent_hash: int | None
    token_ids: tuple[int, ...]
    block_size: int
    lora_name: str | None
    extra_keys: tuple[ExtraKeys, ...] | None = None
    group_idx: int = 0
    spec_kind: str | None = None
    medium: str | None = None
    cache_salt: str | None = None  # SGLang sends it as a field; vLLM inside the first block's extra keys


@dataclass(frozen=True, slots=True)
class Removed:
    block_hashes: tuple[int, ...]
    group_idx: int = 0
    medium: str | None = None


@dataclass(frozen=True, slots=True)
class Cleared:
    pass


KVEvent = Stored | Removed | Cleared


@dataclass(slots=True)
class GroupFilter:
    """Which KV-cache groups of one feed hold full-attention blocks, learned from its stores.

    A store names its group's kind (``kv_cache_spec_kind``); removals name only the group. Groups
    seen with a full-attention kind are kept, groups seen with another kind are skipped, and a group
    never described (older engines send no kind) is kept only if it is group 0 — what every engine
    that does not send kinds uses for full attention."""

    full: set[int] = field(default_factory=lambda: {0})
    partial: set[int] = field(default_factory=set)

    def keep(self, event: KVEvent) -> bool:
        if isinstance(event, Cleared):
            return True
        group = event.group_idx
        if isinstance(event, Stored) and event.spec_kind is not None:
            full = event.spec_kind in FULL_ATTENTION_KINDS
            (self.full if full else self.partial).add(group)
            (self.partial if full else self.full).discard(group)
            return full
        return group in self.full and group not in self.partial


class FeedState(enum.Enum):
    LIVE = "live"
    NO_EVENTS = "no-events"
    DISCONNECTED = "disconnected"
    RESYNCING = "resyncing"
    SILENT = "silent"
    UNVERIFIED = "unverified"  # events flow; none has shown yet that the engine's keys agree with epp's
    KEYS_MISMATCH = "keys-mismatch"  # events flow, but never with blocks of prompts epp routed there
    UNDECODABLE = "undecodable"  # the latest batch could not be decoded (an unknown wire format)


CHAT = "chat"
COMPLETION = "completion"
PROMPT_KINDS = (CHAT, COMPLETION)
"""Prompt kinds whose keys agree or not independently (see *Key agreement*)."""


class KeyAgreement(enum.Enum):
    AGREED = "agreed"
    UNVERIFIED = "unverified"
    MISMATCH = "mismatch"


class SeqCheck(enum.Enum):
    """What a batch's sequence number said about the feed."""

    IN_ORDER = "in-order"
    BASELINE = "baseline"  # the first batch seen, from a publisher that had sent others before it
    GAP = "gap"  # events were lost
    RESTART = "restart"  # sequence went back: a new publisher, the view was cleared
    OVERFLOW = "overflow"  # more blocks than allowed: removals were lost, the view was cleared


class KVEventSink(Protocol):
    def ingest(self, endpoint: str, seq: int, events: Iterable[KVEvent], model: str | None) -> SeqCheck: ...

    def set_connected(self, endpoint: str, connected: bool) -> None: ...

    def lost(self, endpoint: str) -> None: ...


class KVEventView(KVEventSink, Protocol):
    """A sink that also says how far each endpoint's feed can be trusted (read at scrape time)."""

    def feed_state(self, endpoint: str, kind: str | None = None) -> FeedState: ...

    def key_agreement(self, endpoint: str, kind: str) -> KeyAgreement: ...
