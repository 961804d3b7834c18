"""Human and machine output: a rich table per run and ``summary.json``."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rich.table import Table

_COLUMNS: tuple[tuple[str, str, str], ...] = (
    # (header, summary key, format)
    ("policy", "policy", "{}"),
    ("rate×", "rate_scale", "{:g}"),
    ("replicas", "replicas", "{}"),
    ("view", "prefix_view", "{}"),
    ("requests", "requests", "{:,}"),
    ("done", "completed", "{:,}"),
    ("shed", "shed", "{:,}"),
    ("hit", "hit_ratio", "{:.1%}"),
    ("ideal", "ideal_hit_ratio", "{:.1%}"),
    ("capacity", "capacity_hit_ratio", "{:.1%}"),
    ("TTFT p50", "ttft_p50", "{:.3f}"),
    ("p90", "ttft_p90", "{:.3f}"),
    ("p99", "ttft_p99", "{:.3f}"),
    ("TPOT p50", "tpot_p50", "{:.4f}"),
    ("p90", "tpot_p90", "{:.4f}"),
    ("P/D", "disaggregated", "{:,}"),
    ("E2E p90", "e2e_p90", "{:.2f}"),
    ("tok/s", "throughput_tok_s", "{:,.0f}"),
    ("imbalance", "imbalance", "{:.2f}"),
    ("KV batches", "kv_event_batches", "{:,}"),
    ("wall s", "wall_s", "{:.1f}"),
)


def _cell(fmt: str, value: Any) -> str:
    return "–" if value is None else fmt.format(value)


def table(title: str, summaries: Sequence[dict[str, Any]]) -> Table:
    """One row per run; latencies in seconds, hit ratios as cached ÷ prompt tokens."""
    out = Table(title=title, title_justify="left")
    for header, key, _ in _COLUMNS:
        out.add_column(header, justify="left" if key == "policy" else "right", no_wrap=True)
    for summary in summaries:
        out.add_row(*(_cell(fmt, summary[key]) for _, key, fmt in _COLUMNS))
    return out


def dumps(summaries: Sequence[dict[str, Any]]) -> str:
    """The ``summary.json`` document: a JSON array with one object per (policy, rate) run."""
    return json.dumps(list(summaries), indent=2)


def write_summary(out_dir: Path, summaries: Sequence[dict[str, Any]]) -> Path:
    path = out_dir / "summary.json"
    path.write_text(dumps(summaries) + "\n")
    return path
