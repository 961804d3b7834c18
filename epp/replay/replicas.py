"""Active-active picker replicas in offline replay: N schedulers from one policy, one load balancer.

Platform teams run several epp replicas behind the gateway. Each replica is a separate process with
its own learned state: its prefix index knows only the picks it made itself, its in-flight counters
only the requests it sent. What that costs, and what sharing the learned prefix view buys back, is a
property of the policy and the traffic — so replay measures it with the same engines and the same
scheduler code as a single replica, instead of a separate driver:

* ``count`` replicas are built from the policy with seeds ``seed, seed+1, …`` (independent
  tie-breaking, as separate processes have) and take requests in turn, as a round-robin load
  balancer in front of them would (``OfflineReplay``); each gets its own datastore copy, fed the
  same engine snapshots at every poll, for its own in-flight bookkeeping.
* ``shared_prefix_view``: the replicas' prefix producers use one index, so each sees every replica's
  picks — the state ``ReplicatedPrefixIndex`` converges to through Redis, without its few milliseconds of
  replication lag (an upper bound on what sharing buys). Only prefix producers' indexes are shared
  (``approx-prefix-cache-producer`` and the learned fallback of ``precise-prefix-cache-producer``);
  other learned state (SGLang's radix tree, TTFT ledgers, LRU scorers) stays per replica, as it does
  in production. Precise producers need no sharing to agree: every replica receives every engine's
  KV events (``epp.replay.kv_feed``), as every replica's subscriber does in ``connect`` mode.
* ``shared_state`` (``--shared-state``): everything ``epp serve --shared-state-url`` shares — the
  prefix view as above, and the plugins' shared state (``epp.shared``: the TTFT ledger) exchanged
  every ``share_period`` seconds of virtual time (default: serve's period) by a ``VirtualExchange``,
  so each replica sees the others' in-flight work one to two periods old, as over Redis, except their
  bookings and first tokens, which it hears of a millisecond after they happen (as Redis publishes them).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from epp._util.clock import Clock
from epp.replay.policies import Policy
from epp.scheduling import Scheduler
from epp.scheduling.prefix.producer import ApproxPrefixCacheProducer
from epp.shared import VirtualExchange, participants
from epp.shared.protocol import DEFAULT_PERIOD, DEFAULT_TTL

OWN_VIEW = "own"
SHARED_VIEW = "shared"


@dataclass(frozen=True, slots=True)
class Replicas:
    """How many picker replicas a run has and what they share: their learned prefix view, or all of
    their shared state (``shared_state``, the prefix view included) every ``share_period`` seconds."""

    count: int = 1
    shared_prefix_view: bool = False
    shared_state: bool = False
    share_period: float = DEFAULT_PERIOD

    def __post_init__(self) -> None:
        if self.count < 1:
            raise ValueError("--replicas must be at least 1")
        for flag, on in (("--shared-prefix-view", self.shared_prefix_view), ("--shared-state", self.shared_state)):
            if on and self.count < 2:
                raise ValueError(f"{flag} needs --replicas 2 or more (one replica has nothing to share)")
        if not 0 < self.share_period < DEFAULT_TTL:
            raise ValueError(f"--shared-state-period must be positive and below the {DEFAULT_TTL:g} s ttl")

    @property
    def label(self) -> str:
        """For progress lines and errors: empty for the single replica every other run has."""
        if self.count == 1:
            return ""
        shared = self.shared_prefix_view or self.shared_state
        state = f", state shared every {self.share_period * 1000:g} ms" if self.shared_state else ""
        return f"{self.count} replicas, {SHARED_VIEW if shared else OWN_VIEW} view{state}"

    def build(self, policy: Policy, clock: Clock, seed: int) -> tuple[list[Scheduler], str]:
        """Fresh schedulers for one run and the prefix view they ended up with: ``shared`` only when
        some prefix index was actually shared (a policy without a prefix producer has none to share)."""
        schedulers = [policy.build(clock, seed + i) for i in range(self.count)]
        shared = (self.shared_prefix_view or self.shared_state) and share_prefix_views(schedulers) > 0
        view = SHARED_VIEW if shared else OWN_VIEW
        return schedulers, f"{view}+state" if self.shared_state else view

    def exchange(self, schedulers: Sequence[Scheduler], clock: Clock) -> VirtualExchange | None:
        """The exchange of the replicas' shared state (None unless ``shared_state``)."""
        if not self.shared_state:
            return None
        return VirtualExchange([participants(s.plugins) for s in schedulers], self.share_period, DEFAULT_TTL, clock)


def share_prefix_views(schedulers: Sequence[Scheduler]) -> int:
    """Point every replica's prefix producers at the first replica's index (plugins are paired by
    position: the replicas come from one config). Returns how many producers now share an index."""
    first, *others = schedulers
    shared = 0
    for replica in others:
        for mine, theirs in zip(replica.plugins, first.plugins, strict=True):
            if mine.typed_name != theirs.typed_name:
                raise ValueError(f"replicas differ: plugin {mine.typed_name} vs {theirs.typed_name}")
            if isinstance(mine, ApproxPrefixCacheProducer) and isinstance(theirs, ApproxPrefixCacheProducer):
                mine.index = theirs.index
                shared += 1
    return shared
