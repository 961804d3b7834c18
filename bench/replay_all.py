"""Every scheduler preset on every public trace, at a moderate and a near-saturation load.

For each trace the load levels come from the trace itself: a knee search (``epp.replay.knee``) on a
cache-oblivious baseline (``least-inflight``) finds the rate scale where its TTFT p90 doubles;
"moderate" is half of that scale, "near saturation" is the knee itself. Every preset then runs at
both scales on 8 engines of ``llama-3.1-8b-h100``. Writes ``bench/replay.md`` (tables) and plots
under ``bench/replay/<trace>/``.

    python bench/replay_all.py [--traces DIR] [--max-requests N] [--knee-requests N] [--jobs J]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import time
from pathlib import Path
from typing import Any

from epp.engine.config import EngineConfig
from epp.replay.knee import Knee, find_knee
from epp.replay.offline import ClusterSpec
from epp.replay.plots import write_plots
from epp.replay.runner import Job, run_jobs, run_one, trace_bounds
from epp.replay.traces import Trace, read_trace
from epp.scheduling.presets import DEFAULT_PRESET, PRESETS

BASELINE = "least-inflight"
HERE = Path(__file__).resolve().parent


def knee_for(trace: Trace, cluster: ClusterSpec) -> Knee:
    bounds = trace_bounds(trace, cluster)

    def probe(scale: float) -> float | None:
        return run_one(trace, Job(BASELINE, scale), cluster, bounds, lambda n: None).summary["ttft_p90"]

    return find_knee(BASELINE, trace.mean_rate, probe)


def fmt(value: float | None, spec: str) -> str:
    return "–" if value is None else format(value, spec)


def section(trace: Trace, knee: Knee, summaries: list[dict[str, Any]], loads: dict[float, str]) -> list[str]:
    lines = [
        f"## {trace.name}",
        "",
        f"{len(trace.requests):,} requests, {trace.duration:,.0f} s at ×1 ({trace.mean_rate:.2f} req/s). "
        f"Knee of `{BASELINE}`: TTFT p90 doubles ({knee.unloaded_ttft_p90:.3f} → {knee.threshold:.3f} s) "
        f"above rate ×{fmt(knee.rate_scale, '.3g')}{'' if knee.crossed else ' (not crossed)'}. "
        f"Ideal hit ratio {summaries[0]['ideal_hit_ratio']:.1%}, "
        f"capacity bound (one LRU as large as the cluster) {summaries[0]['capacity_hit_ratio']:.1%}.",
        "",
        "| preset | load | rate× | hit | hit ÷ ideal | TTFT p50 s | TTFT p90 s | tok/s | imbalance | shed | wall s |",
        "|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for s in summaries:
        ideal = s["ideal_hit_ratio"]
        ratio = s["hit_ratio"] / ideal if s["hit_ratio"] is not None and ideal else None
        lines.append(
            f"| {s['policy']} | {loads[s['rate_scale']]} | {s['rate_scale']:.3g} | {fmt(s['hit_ratio'], '.1%')} | "
            f"{fmt(ratio, '.2f')} | {fmt(s['ttft_p50'], '.3f')} | {fmt(s['ttft_p90'], '.3f')} | "
            f"{fmt(s['throughput_tok_s'], ',.0f')} | {fmt(s['imbalance'], '.2f')} | {s['shed']} | {s['wall_s']:.1f} |"
        )
    return lines + [""]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--traces", type=Path, default=Path("/work/shared/traces"))
    parser.add_argument("--max-requests", type=int, default=2000, help="requests per run (trace head)")
    parser.add_argument("--knee-requests", type=int, default=1000, help="requests per knee probe")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--out", type=Path, default=HERE / "replay.md")
    args = parser.parse_args()

    cluster = ClusterSpec(engines=8, engine=EngineConfig(profile="llama-3.1-8b-h100"))
    files = sorted(p for p in args.traces.iterdir() if p.suffix in (".jsonl", ".csv") or p.name.endswith(".gz"))
    started = time.perf_counter()
    body: list[str] = []
    raw: dict[str, Any] = {}
    for path in files:
        trace = read_trace(path, args.max_requests)
        knee = knee_for(trace.head(args.knee_requests), cluster)
        scale = knee.rate_scale or 1.0
        loads = {round(scale / 2, 6): "moderate", round(scale, 6): "near saturation"}
        jobs = [Job(policy, rate) for policy in sorted(PRESETS) for rate in loads]
        outcomes = run_jobs(trace, jobs, cluster, trace_bounds(trace, cluster), args.jobs, lambda i, n: None)
        summaries = [o.summary for o in outcomes]
        body += section(trace, knee, summaries, loads)
        plot_dir = HERE / "replay" / path.name.removesuffix(".gz").rsplit(".", 1)[0]
        plot_dir.mkdir(parents=True, exist_ok=True)
        write_plots(plot_dir, [(o.job.label, o.run) for o in outcomes])
        body += [f"Plots: `{plot_dir.relative_to(HERE.parent)}/` (TTFT CDF, hit ratio over time, engine load; written by the script, not committed).", ""]
        raw[path.name] = {"knee": dataclasses.asdict(knee), "runs": summaries}
        print(f"{path.name}: done at {time.perf_counter() - started:.0f} s", flush=True)
    header = [
        "# `epp replay`: every preset on the public traces",
        "",
        f"Generated by `python bench/replay_all.py --max-requests {args.max_requests} "
        f"--knee-requests {args.knee_requests} --jobs {args.jobs}` in {time.perf_counter() - started:.0f} s "
        f"({platform.python_implementation()} {platform.python_version()}, {args.jobs} worker processes on a "
        "shared 2-core machine). 8 simulated engines `llama-3.1-8b-h100` (calibrated H100 latency model, "
        "vLLM-shaped scheduler and prefix cache), metrics polled every 50 ms of virtual time. "
        f"`{DEFAULT_PRESET}` is what `epp serve` runs without a config (minimum predicted TTFT, "
        "docs/routing.md). Hit = cached ÷ prompt tokens as the engines "
        "saw them; ideal = unlimited single cache in trace order (the ceiling); Azure traces carry no prefix "
        "information, so every hit ratio there is 0 by construction.",
        "",
    ]
    args.out.write_text("\n".join(header + body))
    (HERE / "replay" / "summary.json").write_text(json.dumps(raw, indent=2, default=str) + "\n")


if __name__ == "__main__":
    main()
