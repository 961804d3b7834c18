"""De-bucketing coarse arrival times.

Some traces record arrivals in buckets (the Mooncake conversation trace: ~3 s; others: 1 ms or 1 s),
so dozens of requests share one timestamp. Replaying them as a single burst would measure a load
spike the real system never saw, so each group of equal timestamps is spread evenly over its bucket.

The bucket width is the trace's resolution: the 5th percentile of the gaps between consecutive
distinct timestamps (robust to a few jittery stamps), and never past the next distinct timestamp.
Deterministic: same input, same output.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import pairwise


def resolution(times: Sequence[float]) -> float:
    """Typical spacing of distinct timestamps; 0 when there are fewer than two."""
    distinct = sorted(set(times))
    gaps = sorted(b - a for a, b in pairwise(distinct))
    if not gaps:
        return 0.0
    return gaps[len(gaps) // 20]


def spread_buckets(times: Sequence[float]) -> list[float]:
    """``times`` (non-decreasing) with each run of equal values spread evenly over its bucket:
    the k requests stamped t get t, t + w/k, …, t + (k-1)w/k."""
    width = resolution(times)
    out = list(times)
    n = len(out)
    i = 0
    while i < n:
        j = i
        while j + 1 < n and times[j + 1] == times[i]:
            j += 1
        k = j - i + 1
        if k > 1:
            t = times[i]
            w = width if j + 1 >= n else min(width, times[j + 1] - t)
            for m in range(k):
                out[i + m] = t + w * m / k
        i = j + 1
    return out
