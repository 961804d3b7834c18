"""What the soak watches in epp once a second: RSS, open FDs and its pick-latency histogram.

RSS and FDs come from ``/proc`` (Linux), so no extra dependency; the histogram is epp's own
``inference_extension_scheduler_e2e_duration_seconds`` read from its ``/metrics``. Samples remember
the PID they came from: an epp restart starts a new process whose counters begin at zero.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

PICK_HISTOGRAM = "inference_extension_scheduler_e2e_duration_seconds"
FILL_GAUGES = ("epp_extproc_streams", "epp_extproc_buffered_bytes", "epp_model_label_values")


@dataclass(frozen=True, slots=True)
class Sample:
    t: float
    pid: int
    rss_bytes: int
    fds: int
    buckets: tuple[tuple[float, float], ...]  # (upper bound, cumulative count), ascending
    gauges: dict[str, float] = field(default_factory=dict)


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise OSError(f"no VmRSS for pid {pid}")


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def parse_metrics(text: str) -> tuple[tuple[tuple[float, float], ...], dict[str, float]]:
    buckets: list[tuple[float, float]] = []
    gauges: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == PICK_HISTOGRAM + "_bucket":
                buckets.append((float(s.labels["le"]), s.value))
            elif s.name in FILL_GAUGES:
                gauges[s.name] = s.value
    return tuple(sorted(buckets)), gauges


async def sample_loop(pid_of: Callable[[], int | None], metrics_url: str, t0: float, until: float,
                      out: list[Sample], period: float = 1.0) -> None:
    """Append one ``Sample`` per ``period`` until ``until`` (seconds since ``t0``); skips while epp is down."""
    timeout = aiohttp.ClientTimeout(total=period)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        while (now := time.monotonic() - t0) < until:
            pid = pid_of()
            if pid is not None:
                try:
                    async with session.get(metrics_url) as reply:
                        text = await reply.text()
                    buckets, gauges = parse_metrics(text)
                    out.append(Sample(now, pid, rss_bytes(pid), open_fds(pid), buckets, gauges))
                except (TimeoutError, OSError, aiohttp.ClientError, ValueError):
                    pass  # epp restarting: no sample this tick
            await asyncio.sleep(max(0.0, period - (time.monotonic() - t0 - now)))


def quantile(buckets: tuple[tuple[float, float], ...], q: float) -> float | None:
    """``histogram_quantile`` over cumulative (bound, count) pairs: linear inside the bucket it falls in."""
    if not buckets or buckets[-1][1] <= 0:
        return None
    rank = q * buckets[-1][1]
    lower_bound, lower_count = 0.0, 0.0
    for bound, count in buckets:
        if count >= rank:
            if bound == float("inf"):
                return lower_bound
            width = count - lower_count
            return lower_bound + (bound - lower_bound) * ((rank - lower_count) / width if width else 1.0)
        lower_bound, lower_count = bound, count
    return lower_bound


def bucket_delta(first: Sample, last: Sample) -> tuple[tuple[float, float], ...]:
    """Counts added between two samples of the same process."""
    before = dict(first.buckets)
    return tuple((bound, count - before.get(bound, 0.0)) for bound, count in last.buckets)
