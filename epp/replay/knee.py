"""Find the load at which a policy's tail latency breaks: TTFT p90 reaching twice its unloaded value.

The unloaded value is the policy's TTFT p90 with the trace slowed so much (one request per
``UNLOADED_GAP`` seconds on average) that requests almost never overlap: pure prefill time with the
cache hits the policy earns. The rate scale is then doubled until p90 crosses the threshold and the
crossing is bisected (in log space) ``BISECTIONS`` times. Each probe is one full replay.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

UNLOADED_GAP = 60.0
MAX_DOUBLINGS = 10
BISECTIONS = 4

Probe = Callable[[float], float | None]
"""Rate scale → TTFT p90 (None when nothing completed)."""


@dataclass(slots=True)
class Knee:
    """``rate_scale`` is the highest probed scale below the threshold (None: already past it at the
    lowest probe); ``rate_rps`` is the trace's mean arrival rate at that scale. ``crossed`` is False
    when even the highest probe stayed below the threshold (the knee lies beyond it)."""

    policy: str
    unloaded_ttft_p90: float
    threshold: float
    rate_scale: float | None
    rate_rps: float | None
    crossed: bool = False
    probes: list[tuple[float, float | None]] = field(default_factory=list)


def unloaded_scale(mean_rate: float) -> float:
    return 1.0 / (UNLOADED_GAP * mean_rate) if mean_rate > 0 else 1.0


def find_knee(policy: str, mean_rate: float, probe: Probe, start: float = 1.0) -> Knee:
    base = probe(unloaded_scale(mean_rate))
    if base is None:
        raise ValueError(f"policy {policy}: no request completed even unloaded")
    knee = Knee(policy, base, 2 * base, None, None)

    def over(scale: float) -> bool:
        p90 = probe(scale)
        knee.probes.append((scale, p90))
        return p90 is None or p90 >= knee.threshold

    lo: float | None = None
    hi: float | None = None
    scale = start
    for _ in range(MAX_DOUBLINGS):
        if over(scale):
            hi = scale
            if lo is not None:
                break
            scale /= 2
        else:
            lo = scale
            if hi is not None:
                break
            scale *= 2
    if lo is not None and hi is not None:
        for _ in range(BISECTIONS):
            mid = math.sqrt(lo * hi)
            if over(mid):
                hi = mid
            else:
                lo = mid
    knee.rate_scale = lo
    knee.crossed = hi is not None
    knee.rate_rps = lo * mean_rate if lo is not None else None
    return knee
