"""PNG plots of a set of runs, drawn with matplotlib's Agg backend (no display needed).

- ``ttft_cdf.png``: the TTFT distribution of each run;
- ``hit_ratio_over_time.png``: cached ÷ prompt tokens per arrival-time window, per run;
- ``engine_load.png``: requests held by each engine (running + waiting) over time, one panel per run.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # before pyplot is imported: no display, no GUI toolkit

import matplotlib.pyplot as plt

from epp.replay.offline import RunResult

HIT_WINDOWS = 40


def _ttft_cdf(runs: Sequence[tuple[str, RunResult]], path: Path) -> None:
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for label, run in runs:
        ttft = sorted(r.first_token - r.arrival for r in run.records if r.first_token is not None)
        if ttft:
            ax.plot(ttft, [(i + 1) / len(ttft) for i in range(len(ttft))], label=label)
    ax.set_xscale("log")
    ax.set_xlabel("TTFT (s)")
    ax.set_ylabel("fraction of requests")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _hit_over_time(runs: Sequence[tuple[str, RunResult]], path: Path) -> None:
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for label, run in runs:
        seen = [r for r in run.records if r.first_token is not None]
        if not seen:
            continue
        span = max(r.arrival for r in seen) or 1.0
        cached = [0] * HIT_WINDOWS
        prompt = [0] * HIT_WINDOWS
        for r in seen:
            w = min(HIT_WINDOWS - 1, int(r.arrival / span * HIT_WINDOWS))
            cached[w] += r.cached_tokens
            prompt[w] += r.prompt_tokens
        xs = [(w + 0.5) * span / HIT_WINDOWS for w in range(HIT_WINDOWS) if prompt[w]]
        ys = [cached[w] / prompt[w] for w in range(HIT_WINDOWS) if prompt[w]]
        ax.plot(xs, ys, marker=".", label=label)
    ax.set_xlabel("arrival time (s)")
    ax.set_ylabel("prefix-cache hit ratio (tokens)")
    ax.set_ylim(0, 1)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _engine_load(runs: Sequence[tuple[str, RunResult]], path: Path) -> None:
    fig, axes = plt.subplots(len(runs), 1, figsize=(7, 1.5 * len(runs) + 0.6), sharex=True, squeeze=False)
    for ax, (label, run) in zip(axes[:, 0], runs):
        times = [s.time for s in run.load]
        for e in range(run.engines):
            ax.plot(times, [s.per_engine[e] for s in run.load], linewidth=0.6)
        ax.set_title(label, fontsize="small")
        ax.set_ylabel("requests")
        ax.grid(True, alpha=0.3)
    axes[-1, 0].set_xlabel("time (s)")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def write_plots(out_dir: Path, runs: Sequence[tuple[str, RunResult]]) -> list[Path]:
    """Draw all plots for ``runs`` (label, result) into ``out_dir``; returns the files written."""
    paths = [out_dir / "ttft_cdf.png", out_dir / "hit_ratio_over_time.png", out_dir / "engine_load.png"]
    for draw, path in zip((_ttft_cdf, _hit_over_time, _engine_load), paths):
        draw(runs, path)
    return paths
