"""One policy run boiled down to the numbers users compare: the ``summary.json`` object.

Keys are fixed (``SUMMARY_KEYS``) so scripts can rely on them; a value that cannot be computed (no
request completed) is ``None``, never NaN (which is not JSON).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from epp.replay.offline import RequestRecord, RunResult

SUMMARY_KEYS = (
    "policy",
    "rate_scale",
    "replicas",
    "prefix_view",
    "requests",
    "completed",
    "shed",
    "shed_too_long",
    "hit_ratio",
    "ideal_hit_ratio",
    "capacity_hit_ratio",
    "ttft_p50",
    "ttft_p90",
    "ttft_p99",
    "tpot_p50",
    "tpot_p90",
    "disaggregated",
    "e2e_p90",
    "throughput_tok_s",
    "imbalance",
    "busy_imbalance",
    "kv_event_batches",
    "wall_s",
    "by_priority",
)

BAND_KEYS = ("requests", "completed", "shed", "ttft_p50", "ttft_p90")
"""Keys of each ``by_priority`` band (the object is keyed by priority as a string, highest first)."""


def percentile(values: Sequence[float], p: float) -> float | None:
    """Linear interpolation between closest ranks (numpy's default); ``values`` sorted ascending."""
    if not values:
        return None
    k = (len(values) - 1) * p / 100.0
    lo = math.floor(k)
    hi = min(lo + 1, len(values) - 1)
    return values[lo] + (values[hi] - values[lo]) * (k - lo)


def hit_ratio(records: Sequence[RequestRecord]) -> float | None:
    """Cached ÷ prompt tokens over the requests an engine admitted (its prefix cache was asked)."""
    seen = [r for r in records if r.first_token is not None]
    total = sum(r.prompt_tokens for r in seen)
    return sum(r.cached_tokens for r in seen) / total if total else None


def imbalance(dispatched: Sequence[int]) -> float | None:
    """Max ÷ mean requests dispatched per engine: 1.0 is perfectly even."""
    total = sum(dispatched)
    return max(dispatched) / (total / len(dispatched)) if total else None


def busy_imbalance(busy: Sequence[float]) -> float | None:
    """Max ÷ mean over engines of the seconds each spent stepping (``RunResult.busy``): 1.0 when every
    engine worked as long as the others. Unlike ``imbalance`` it weighs a request by what it cost the
    engine that served it, so it is the one that means something on a pool of unequal engines (where
    a fast engine should take more requests). None when not measured (live replay) or nothing ran."""
    total = sum(busy)
    return max(busy) / (total / len(busy)) if busy and total > 0 else None


def too_long(record: RequestRecord) -> bool:
    """Refused by the engine because prompt + output exceed its ``max_model_len``: the trace's doing,
    not the scheduler's (offline replay says so in the shed reason; live mode only sees an HTTP status)."""
    return record.shed is not None and "max_model_len" in record.shed


def _ttfts(records: Sequence[RequestRecord]) -> list[float]:
    return sorted(r.first_token - r.arrival for r in records if r.first_token is not None and r.finish is not None)


def by_priority(records: Sequence[RequestRecord]) -> dict[str, dict[str, Any]]:
    """Per priority band: how many requests, completed, shed (refused by the picker or the engine), and
    TTFT p50/p90 of the completed ones. Keys are priorities as strings (JSON keys), highest band first."""
    bands: dict[int, list[RequestRecord]] = {}
    for record in records:
        bands.setdefault(record.priority, []).append(record)
    out = {}
    for priority in sorted(bands, reverse=True):
        band = bands[priority]
        ttft = _ttfts(band)
        out[str(priority)] = {
            "requests": len(band),
            "completed": len(ttft),
            "shed": sum(1 for r in band if r.shed is not None),
            "ttft_p50": percentile(ttft, 50),
            "ttft_p90": percentile(ttft, 90),
        }
    return out


def summarize(
    run: RunResult, policy: str, rate_scale: float, ideal_hit_ratio: float, capacity_hit_ratio: float,
    *, replicas: int = 1, prefix_view: str = "own",
) -> dict[str, Any]:
    """``replicas`` picked the run's requests in turn; ``prefix_view`` says whether they shared their
    learned prefix index (``own``/``shared``, see ``epp.replay.replicas``)."""
    records = run.records
    done = [
        (r.arrival, r.first_token, r.finish, r.output_tokens)
        for r in records
        if r.first_token is not None and r.finish is not None
    ]
    ttft = sorted(first - arrival for arrival, first, _, _ in done)
    tpot = sorted((finish - first) / (n - 1) for _, first, finish, n in done if n > 1)
    e2e = sorted(finish - arrival for arrival, _, finish, _ in done)
    span = max((finish for _, _, finish, _ in done), default=0.0) - min((r.arrival for r in records), default=0.0)
    return {
        "policy": policy,
        "rate_scale": rate_scale,
        "replicas": replicas,
        "prefix_view": prefix_view,
        "requests": len(records),
        "completed": len(done),
        "shed": sum(1 for r in records if r.shed is not None),
        "shed_too_long": sum(1 for r in records if too_long(r)),
        "hit_ratio": hit_ratio(records),
        "ideal_hit_ratio": ideal_hit_ratio,
        "capacity_hit_ratio": capacity_hit_ratio,
        "ttft_p50": percentile(ttft, 50),
        "ttft_p90": percentile(ttft, 90),
        "ttft_p99": percentile(ttft, 99),
        "tpot_p50": percentile(tpot, 50),
        "tpot_p90": percentile(tpot, 90),
        "disaggregated": sum(1 for r in records if r.prefill_engine >= 0),
        "e2e_p90": percentile(e2e, 90),
        "throughput_tok_s": sum(n for *_, n in done) / span if span > 0 else None,
        "imbalance": imbalance(run.dispatched),
        "busy_imbalance": busy_imbalance(run.busy),
        "kv_event_batches": run.kv_event_batches,
        "wall_s": run.wall_s,
        "by_priority": by_priority(records),
    }
