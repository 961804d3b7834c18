"""The soak's fault schedule: what breaks, when, for how long, and which requests it may fail.

Times are fractions of the run, so a 60-second test and a 10-minute soak exercise the same story.
epp's own restarts come first: RSS/FD growth is judged on the last epp process, which then lives
through every engine fault from ``LEAK_WINDOW_START`` on (the last 80% of the run).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

EPP = "epp"
LEAK_WINDOW_START = 0.20
# Failures this long after a fault's window closed are still its doing (Envoy/epp noticing recovery).
ATTRIBUTION_GRACE_S = 2.0


class FaultKind(enum.Enum):
    ENGINE_KILL = "engine-kill"  # SIGKILL the engine, start it again after the duration
    METRICS_GARBAGE = "metrics-garbage"  # the engine's /metrics answers garbage for the duration
    METRICS_HANG = "metrics-hang"  # the engine's /metrics never answers for the duration
    ENGINE_SLOW = "engine-slow"  # the engine runs 10x slower for the duration
    MEMBERSHIP = "membership"  # endpoints file: the engine leaves, the spare joins; reverted after
    EPP_SIGTERM = "epp-sigterm"  # graceful drain, then start again
    EPP_SIGKILL = "epp-sigkill"  # crash, then start again


# Which requests a fault may fail: routed to its engine (or to no engine: epp answered / no upstream).
ENGINE_FAULTS = frozenset({FaultKind.ENGINE_KILL, FaultKind.METRICS_GARBAGE, FaultKind.METRICS_HANG,
                           FaultKind.ENGINE_SLOW, FaultKind.MEMBERSHIP})


@dataclass
class FaultEvent:
    """One scheduled fault; ``started``/``ended`` (seconds since the run began) are set as it happens."""

    kind: FaultKind
    at: float
    duration: float
    target: str
    joins: str | None = None  # MEMBERSHIP: the spare engine that enters the pool meanwhile
    started: float | None = None
    ended: float | None = None

    @property
    def name(self) -> str:
        return f"{self.kind.value}:{self.target}"

    def covers(self, start: float, end: float) -> bool:
        """Does a request that ran from ``start`` to ``end`` overlap this fault's window (plus grace)?"""
        if self.started is None:
            return False
        until = (self.ended if self.ended is not None else float("inf")) + ATTRIBUTION_GRACE_S
        return start <= until and end >= self.started


def default_plan(duration: float, engines: list[str], spare: str) -> list[FaultEvent]:
    """Every fault kind once (engine kill twice), at fixed fractions of ``duration``, non-overlapping."""
    if len(engines) < 3:
        raise ValueError("the soak plan needs at least three engines (plus the spare)")
    e0, e1, e2 = engines[:3]
    span = 0.06 * duration

    def at(fraction: float, kind: FaultKind, target: str, length: float = span, joins: str | None = None) -> FaultEvent:
        return FaultEvent(kind, fraction * duration, length, target, joins)

    return [
        at(0.06, FaultKind.EPP_SIGTERM, EPP, 0.0),
        at(0.12, FaultKind.EPP_SIGKILL, EPP, 0.0),
        at(0.24, FaultKind.ENGINE_KILL, e0),
        at(0.34, FaultKind.METRICS_GARBAGE, e1),
        at(0.44, FaultKind.METRICS_HANG, e2),
        at(0.54, FaultKind.ENGINE_SLOW, e0),
        at(0.64, FaultKind.MEMBERSHIP, e1, joins=spare),
        at(0.76, FaultKind.ENGINE_KILL, e2),
    ]
