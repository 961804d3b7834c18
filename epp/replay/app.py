"""What ``epp replay`` does once its flags are parsed: load, run, report."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from epp.engine.config import DEFAULT_PROFILE, EngineConfig
from epp.replay import report
from epp.replay.knee import Knee, find_knee
from epp.replay.live import LiveSpec
from epp.replay.offline import ClusterSpec, parse_profiles
from epp.replay.plots import PlotContext, require_matplotlib, write_plots
from epp.replay.policies import resolve
from epp.replay.replicas import Replicas
from epp.replay.runner import Bounds, Job, RunError, run_jobs, run_live_job, run_one, trace_bounds
from epp.replay.synthetic import WORKLOADS
from epp.replay.traces import Trace, TraceError, read_trace
from epp.config.presets import PRESETS

MAX_ISSUES_SHOWN = 10
PIPED_WIDTH = 120  # output going to a file or a pipe: the widest terminal the tables are laid out for
PIPED_PROGRESS_STEPS = 4  # a line per run at 25 %, 50 %, 75 % and done when no live bar can be drawn


class ReplayError(Exception):
    """Bad input the user can fix; printed without a traceback."""


def load_trace(args: argparse.Namespace, console: Console) -> Trace:
    if args.synthetic:
        if args.trace:
            raise ReplayError("give either TRACE or --synthetic, not both")
        workload = WORKLOADS[args.synthetic]
        values = {f.name: getattr(args, f"{workload.flag_prefix}_{f.name}") for f in dataclasses.fields(workload.params)}
        try:
            trace = workload.build(workload.params(**values), args.seed)
        except ValueError as exc:
            raise ReplayError(str(exc)) from None
        return trace.head(args.max_requests)
    if not args.trace:
        raise ReplayError("give a TRACE file or --synthetic KIND")
    try:
        trace = read_trace(args.trace, args.max_requests)
    except TraceError as exc:
        raise ReplayError(str(exc)) from None
    if trace.issues:
        console.print(f"[yellow]{args.trace}: skipped {len(trace.issues)} malformed line(s):[/]")
        for issue in trace.issues[:MAX_ISSUES_SHOWN]:
            console.print(f"  {issue}", markup=False, highlight=False)
        if len(trace.issues) > MAX_ISSUES_SHOWN:
            console.print(f"  … and {len(trace.issues) - MAX_ISSUES_SHOWN} more")
    return trace


def cluster_spec(args: argparse.Namespace) -> ClusterSpec:
    try:
        profiles = parse_profiles(args.profile or DEFAULT_PROFILE, args.engines)
    except ValueError as exc:
        raise ReplayError(str(exc)) from None
    engine = EngineConfig(profile=profiles[0], num_gpu_blocks=args.num_gpu_blocks, seed=args.seed)
    roles = args.roles or ()
    if roles and len(roles) != args.engines:
        raise ReplayError(f"--roles counts sum to {len(roles)}, --engines is {args.engines}")
    return ClusterSpec(engines=args.engines, engine=engine, profiles=profiles if len(set(profiles)) > 1 else (),
                       roles=roles)


def policies(names: list[str] | None) -> list[str]:
    """The policy specs to run, checked up front so a typo fails before any replay starts."""
    specs = names or sorted(PRESETS)
    try:
        for spec in specs:
            resolve(spec)
    except ValueError as exc:
        raise ReplayError(str(exc)) from None
    return specs


def replicas(args: argparse.Namespace) -> Replicas:
    """``--replicas``/``--shared-prefix-view``/``--shared-state``, checked; live runs start one ``epp serve``, so only 1."""
    try:
        pickers = Replicas(args.replicas, args.shared_prefix_view, args.shared_state, args.shared_state_period)
    except ValueError as exc:
        raise ReplayError(str(exc)) from None
    if args.live and pickers.count > 1:
        raise ReplayError("--replicas runs offline only (--live starts one epp serve)")
    return pickers


def run_knee(
    trace: Trace, policy: str, seed: int, cluster: ClusterSpec, bounds: Bounds, console: Console, pickers: Replicas
) -> Knee:
    def probe(scale: float) -> float | None:
        with console.status(f"knee search: {policy} at rate ×{scale:.3g}"):
            outcome = run_one(trace, Job(policy, scale, seed, pickers), cluster, bounds, lambda n: None)
        p90: float | None = outcome.summary["ttft_p90"]
        return p90

    knee = find_knee(policy, trace.mean_rate, probe)
    if knee.rate_scale is None:
        console.print(f"knee ({policy}): TTFT p90 ≥ 2× unloaded at every probed rate")
    else:
        beyond = "" if knee.crossed else " (not crossed: the knee lies beyond)"
        console.print(
            f"knee ({policy}): rate ×{knee.rate_scale:.3g} ≈ {knee.rate_rps:.2f} req/s keeps TTFT p90 "
            f"< {knee.threshold:.3f} s (unloaded {knee.unloaded_ttft_p90:.3f} s){beyond}"
        )
    return knee


def _console(stderr: bool) -> Console:
    """Rich console; redirected to a file (and no ``COLUMNS``), tables are laid out for 120 columns."""
    console = Console(stderr=stderr)
    if not console.is_terminal and "COLUMNS" not in os.environ:
        console.width = PIPED_WIDTH
    return console


class PipedProgress:
    """Progress as plain lines for logs and pipes, where a live bar cannot redraw: each run reports at
    every quarter of its requests, so a minutes-long replay is never silent."""

    def __init__(self, console: Console, jobs: list[Job], total: int) -> None:
        self.console, self.jobs, self.total = console, jobs, max(total, 1)
        self.reported = [0] * len(jobs)
        self.started = time.monotonic()

    def update(self, index: int, done: int) -> None:
        step = min(PIPED_PROGRESS_STEPS, done * PIPED_PROGRESS_STEPS // self.total)
        if step > self.reported[index]:
            self.reported[index] = step
            finished = sum(r == PIPED_PROGRESS_STEPS for r in self.reported)
            self.console.print(
                f"{self.jobs[index].label}: {done:,}/{self.total:,} requests ({step * 100 // PIPED_PROGRESS_STEPS}%), "
                f"{finished}/{len(self.jobs)} runs done, {time.monotonic() - self.started:.0f} s",
                highlight=False, markup=False, soft_wrap=True,
            )


def replay(args: argparse.Namespace) -> int:
    console = _console(stderr=True)
    if args.live and args.find_knee:
        raise ReplayError("--find-knee runs offline only")
    if args.live and args.roles:
        raise ReplayError("--roles runs offline only (live replay starts aggregated epp sim engines)")
    if args.time_scale <= 0:
        raise ReplayError("--time-scale must be positive")
    pickers = replicas(args)
    trace = load_trace(args, console)
    cluster = cluster_spec(args)
    bounds = trace_bounds(trace, cluster)
    out: Path | None = args.out
    if out is not None:
        try:
            require_matplotlib()  # now, not after minutes of replay
        except RuntimeError as exc:
            raise ReplayError(str(exc)) from None
        out.mkdir(parents=True, exist_ok=True)
    title = (
        f"{trace.name}: {len(trace.requests):,} requests over {trace.duration:,.0f} s, {cluster.label}"
        + (f", {pickers.label}" if pickers.label else "")
        + (", roles " + ",".join(f"{r}:{cluster.roles.count(r)}" for r in dict.fromkeys(cluster.roles))
           if cluster.roles else "")
    )
    results: dict[str, Any] = {}
    if args.find_knee:
        (policy,) = policies([args.find_knee])
        knee = run_knee(trace, policy, args.seed, cluster, bounds, console, pickers)
        results["knee"] = dataclasses.asdict(knee)
        if out is not None:
            (out / "knee.json").write_text(json.dumps(results["knee"], indent=2) + "\n")
        if not args.policy:
            if args.json:
                print(json.dumps(results["knee"], indent=2))
            return 0
    jobs = [Job(policy, rate, args.seed, pickers) for policy in policies(args.policy) for rate in args.rate_scale]
    if not console.is_terminal:
        console.print(f"{title}: {len(jobs)} run(s), {args.jobs if not args.live else 1} at a time",
                      highlight=False, soft_wrap=True)
    piped = PipedProgress(console, jobs, len(trace.requests))
    with Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
        console=console, transient=True, disable=not console.is_terminal,
    ) as bar:
        tasks = [bar.add_task(job.label, total=len(trace.requests)) for job in jobs]

        def progress(index: int, done: int) -> None:
            bar.update(tasks[index], completed=done)
            if not console.is_terminal:
                piped.update(index, done)

        try:
            if args.live:
                spec = LiveSpec(args.time_scale, out / "live" if out is not None else None)
                outcomes = []
                for index, job in enumerate(jobs):
                    outcomes.append(run_live_job(trace, job, cluster, bounds, spec))
                    progress(index, len(trace.requests))
            else:
                outcomes = run_jobs(trace, jobs, cluster, bounds, args.jobs, progress)
        except RunError as exc:
            raise ReplayError(str(exc)) from None
    summaries = [o.summary for o in outcomes]
    target = console if args.json else _console(stderr=False)
    target.print(report.tables(title, summaries, target.width))
    if out is not None:
        report.write_summary(out, summaries)
        plots = write_plots(out, [(o.job.label, o.run) for o in outcomes], PlotContext(trace.name, bounds))
        console.print(f"wrote {out}/summary.json" + (f" and {len(plots)} plots" if plots else ""))
    if args.json:
        sys.stdout.write(report.dumps(summaries) + "\n")
    return 0
