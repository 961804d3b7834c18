"""PNG plots of a set of runs, drawn with matplotlib's Agg backend (no display needed).

- ``ttft_cdf.png``: the TTFT distribution of each run;
- ``hit_ratio_over_time.png``: cached ÷ prompt tokens per arrival-time window, per run, against the
  trace's ideal (unlimited cache) and capacity-bound hit ratios;
- ``engine_load.png``: requests held by each engine (running + waiting) over time, one panel per run,
  one labelled line per engine, every panel on the same scale.

Every plot names the trace in its title, so a PNG still says what it shows when it is passed around.
matplotlib is the optional ``replay`` extra (the runtime image leaves it out): it is imported when a plot
is drawn, and ``require_matplotlib`` lets ``epp replay --out`` fail before a long run instead of after.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from epp.replay.offline import RunResult

if TYPE_CHECKING:
    from epp.replay.runner import Bounds

HIT_WINDOWS = 40
MISSING = "plots need matplotlib, which is not installed: pip install 'epp[replay]' (or leave out --out)"


@dataclass(frozen=True, slots=True)
class PlotContext:
    """What every plot states besides the runs: the trace's name and its hit-ratio bounds."""

    trace: str
    bounds: Bounds


def require_matplotlib() -> None:
    """Raise ``RuntimeError`` naming the fix when matplotlib is missing."""
    if importlib.util.find_spec("matplotlib") is None:
        raise RuntimeError(MISSING)


def _pyplot() -> Any:
    require_matplotlib()
    import matplotlib

    matplotlib.use("Agg")  # before pyplot is imported: no display, no GUI toolkit
    import matplotlib.pyplot as plt

    return plt


def _ttft_cdf(plt: Any, runs: Sequence[tuple[str, RunResult]], context: PlotContext, path: Path) -> None:
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for label, run in runs:
        ttft = sorted(r.first_token - r.arrival for r in run.records if r.first_token is not None)
        if ttft:
            ax.plot(ttft, [(i + 1) / len(ttft) for i in range(len(ttft))], label=label)
    ax.set_xscale("log")
    ax.set_xlabel("TTFT (s, log scale)")
    ax.set_ylabel("fraction of requests")
    ax.set_title(f"Time to first token, CDF — {context.trace}", fontsize="medium")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize="small", title="policy ×rate", title_fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _hit_over_time(plt: Any, runs: Sequence[tuple[str, RunResult]], context: PlotContext, path: Path) -> None:
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
    ax.axhline(context.bounds.ideal, color="black", linestyle="--", linewidth=1,
               label=f"ideal, unlimited cache ({context.bounds.ideal:.1%})")
    ax.axhline(context.bounds.capacity, color="grey", linestyle=":", linewidth=1.2,
               label=f"capacity bound, pool's KV cache ({context.bounds.capacity:.1%})")
    ax.set_xlabel("arrival time (s)")
    ax.set_ylabel("prefix-cache hit ratio (cached ÷ prompt tokens)")
    ax.set_ylim(0, 1)
    ax.set_title(f"Prefix-cache hit ratio over the trace — {context.trace}", fontsize="medium")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _engine_load(plt: Any, runs: Sequence[tuple[str, RunResult]], context: PlotContext, path: Path) -> None:
    fig, axes = plt.subplots(len(runs), 1, figsize=(8, 1.6 * len(runs) + 1.4), sharex=True, sharey=True,
                             squeeze=False)
    for ax, (label, run) in zip(axes[:, 0], runs):
        times = [s.time for s in run.load]
        for e in range(run.engines):
            ax.plot(times, [s.per_engine[e] for s in run.load], linewidth=0.7, label=f"engine {e}")
        ax.set_title(label, fontsize="small")
        ax.set_ylabel("requests")
        ax.grid(True, alpha=0.3)
    axes[-1, 0].set_xlabel("time (s)")
    handles, labels = axes[0, 0].get_legend_handles_labels()
    fig.suptitle(f"Requests held per engine (running + waiting) — {context.trace}", fontsize="medium")
    fig.legend(handles, labels, loc="lower center", ncol=min(8, max(1, len(labels))), fontsize="x-small")
    fig.tight_layout(rect=(0, 0.06 + 0.03 * ((len(labels) - 1) // 8), 1, 1))
    fig.savefig(path, dpi=80)
    plt.close(fig)


def write_plots(out_dir: Path, runs: Sequence[tuple[str, RunResult]], context: PlotContext) -> list[Path]:
    """Draw all plots for ``runs`` (label, result) into ``out_dir``; returns the files written."""
    plt = _pyplot()
    paths = [out_dir / "ttft_cdf.png", out_dir / "hit_ratio_over_time.png", out_dir / "engine_load.png"]
    for draw, path in zip((_ttft_cdf, _hit_over_time, _engine_load), paths):
        draw(plt, runs, context, path)
    return paths
