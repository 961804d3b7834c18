"""Shared scorer arithmetic.

Staleness: a scorer built on engine metrics gives ``NEUTRAL`` (0.5, the middle of the score range)
to an endpoint whose metrics are stale or missing, and leaves it out of any min/max normalisation,
so an endpoint that stopped reporting is neither chased nor shunned by that scorer and a dead one
never blocks a pick.
"""

from __future__ import annotations

from collections.abc import Sequence

from epp.datastore import EndpointMetrics, EndpointState

NEUTRAL = 0.5


def fresh(state: EndpointState) -> EndpointMetrics | None:
    """The endpoint's metrics when they are current, else None."""
    return None if state.stale else state.metrics


def inverse_min_max(values: Sequence[float | None]) -> list[float]:
    """(max − v) / (max − min) over the known values, so the least loaded scores 1 and the most 0;
    all equal → 1; unknown (None) → ``NEUTRAL``."""
    known = [v for v in values if v is not None]
    if not known:
        return [NEUTRAL] * len(values)
    hi, lo = max(known), min(known)
    if hi == lo:
        return [NEUTRAL if v is None else 1.0 for v in values]
    span = hi - lo
    return [NEUTRAL if v is None else (hi - v) / span for v in values]
