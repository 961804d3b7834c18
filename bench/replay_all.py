"""Issue #10's routing targets, side by side in one run: every preset on every public trace.

For each trace in ``--traces`` (``--match`` keeps those whose name contains a string), its first
``--max-requests`` requests (bounds on the same subset):

1. the knee of ``gie-default`` (``epp.replay.knee``, as ``epp replay --find-knee gie-default``): the
   rate scale where its TTFT p90 reaches twice its unloaded value;
2. every preset at ×1, between ×1 and the knee (geometric middle), at the knee and just past it
   (×2^¼), plus ``default`` unloaded (the p90 floor no load goes below), on 8 engines of
   ``--profile`` (``llama-3.1-8b-h100``, or a mix ``p:4,q:4`` as ``epp replay`` takes it; no policy is
   told which); ``--policies`` narrows the presets; gie-default's runs at scales its knee search
   already probed are reused;
3. the targets (``epp.replay.targets``) for ``default``, met or not, with the numbers behind a miss;
   with ``llm-d-default`` among the policies also issue #15's against it (TTFT p90 ≤ 0.85× at the knee,
   ≤ 1.05× at every rate from ×1 to the knee).

Writes ``--out`` (``bench/replay.md``) and, in the folder of that name without ``.md``,
``summary.json`` and plots of the knee runs under ``<trace>/``. ``--check`` exits 1 when a target is missed (vacuous ones do not count).

    python bench/replay_all.py [--traces DIR] [--match S ...] [--profile P] [--policies A,B] [--max-requests N]
                               [--jobs J] [--out FILE] [--check]
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import math
import multiprocessing
import platform
import sys
import time
from collections.abc import Sequence
from concurrent.futures import Executor, Future, ProcessPoolExecutor, ThreadPoolExecutor, as_completed
from pathlib import Path
from typing import Any

from epp.engine.config import EngineConfig
from fetch_traces import TRACES_DIR, require  # bench/ is on sys.path when run as a script
from epp.replay.knee import Knee, find_knee, unloaded_scale
from epp.replay.offline import ClusterSpec, parse_profiles
from epp.replay.plots import PlotContext, write_plots
from epp.replay.policies import DEFAULT
from epp.replay.runner import Bounds, Job, Outcome, run_one, trace_bounds
from epp.replay.targets import Loads, Verdict, evaluate, versus
from epp.replay.traces import Trace, read_trace
from epp.config.presets import PRESETS

BASELINE = "gie-default"
REFERENCE = "round-robin"
LLM_D = "llm-d-default"
ALL_POLICIES = (DEFAULT, BASELINE, REFERENCE, *sorted(set(PRESETS) - {DEFAULT, BASELINE, REFERENCE}))
PAST_KNEE = 2**0.25
ENGINES = 8
HERE = Path(__file__).resolve().parent
QUICK = False
"""``--quick``: run ×1 and the knee only (no middle, past-knee or unloaded runs), for a loaded machine."""
LEVERS = (
    "What moves a miss (from the analysis in bench/RESULTS.md, \"Default policy\"): hit ÷ capacity — "
    "`default` already reads the engines' KV events (its precise view knows what was evicted), so the "
    "remaining gap at the knee is the predictor sending a request to a colder engine when the warm one's "
    "queue costs more than the hit saves (a TTFT win); a larger `workWeight` buys hits with TTFT, and "
    "past the capacity bound only more KV memory helps. TTFT p90 — its floor is the "
    "policy's unloaded p90 (prefill of the trace's long prompts with the hits it earns): a ratio target "
    "below floor ÷ baseline is out of reach for any placement. The floor is indicative: with nothing "
    "queued, score ties send most requests to few engines, so check the unloaded row's hit ratio against ×1's."
)


@dataclasses.dataclass(slots=True)
class KneeSearch:
    knee: Knee
    bounds: Bounds
    reused: dict[float, Outcome]
    """gie-default's probe outcomes at scales the table needs (unloaded, ×1, the knee)."""


@functools.cache
def cluster(profile: str) -> ClusterSpec:
    """``ENGINES`` engines of ``profile`` (``--profile``'s syntax: one profile, or a mix)."""
    profiles = parse_profiles(profile, ENGINES)
    mixed = profiles if len(set(profiles)) > 1 else ()
    return ClusterSpec(engines=ENGINES, engine=EngineConfig(profile=profiles[0]), profiles=mixed)


@functools.cache
def load(path: Path, max_requests: int | None, profile: str) -> tuple[Trace, Bounds]:
    """The trace's head and its bounds, read once per process (workers serve many runs of one trace)."""
    trace = read_trace(path, max_requests)
    return trace, trace_bounds(trace, cluster(profile))


def run_task(path: Path, max_requests: int | None, profile: str, job: Job) -> Outcome:
    trace, bounds = load(path, max_requests, profile)
    return run_one(trace, job, cluster(profile), bounds, lambda n: None)


def search_knee(path: Path, max_requests: int | None, profile: str) -> KneeSearch:
    """gie-default's knee on one trace, its probes in sequence (one worker per trace)."""
    trace, bounds = load(path, max_requests, profile)
    probed: dict[float, Outcome] = {}

    def probe(scale: float) -> float | None:
        probed[scale] = run_task(path, max_requests, profile, Job(BASELINE, scale))
        p90: float | None = probed[scale].summary["ttft_p90"]
        return p90

    knee = find_knee(BASELINE, trace.mean_rate, probe)
    keep = {unloaded_scale(trace.mean_rate), *load_levels(knee.rate_scale)}  # every level the plan runs
    return KneeSearch(knee, bounds, {s: o for s, o in probed.items() if s in keep})


def plan(search: KneeSearch, mean_rate: float, policies: Sequence[str]) -> list[Job]:
    """Every policy at every load level, default unloaded; minus what the knee search already ran."""
    levels = load_levels(search.knee.rate_scale)
    jobs = [Job(p, r) for p in policies for r in levels if not (p == BASELINE and r in search.reused)]
    return jobs if QUICK else [*jobs, Job(DEFAULT, unloaded_scale(mean_rate))]


def executor(workers: int) -> Executor:
    """Long-lived worker processes (spawned: each import of the simulator costs ~1.5 s of CPU, so not
    one per run as ``epp.replay.runner.run_jobs`` does); a single in-process thread for ``--jobs 1``."""
    if workers <= 1:
        return ThreadPoolExecutor(1)
    return ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"))


def load_levels(knee: float | None) -> dict[float, str]:
    """Rate scale → label: ×1, the geometric middle up to the knee, the knee, just past it (``QUICK``:
    ×1 and the knee only)."""
    levels = {1.0: "×1"}
    if knee is None:
        return levels
    if QUICK:
        levels[knee] = "knee"
        return levels
    if max(knee, 1 / knee) > 1.5:
        levels[math.sqrt(knee)] = "between"
    levels[knee] = "knee"
    levels[knee * PAST_KNEE] = "past knee"
    return levels


def fmt(value: float | None, spec: str) -> str:
    return "–" if value is None else format(value, spec)


def status(verdict: Verdict) -> str:
    return {True: "met", False: "**NOT MET**", None: "n/a"}[verdict.met]


def knee_text(knee: Knee, trace: Trace) -> str:
    probes = ", ".join(f"×{s:.3g} → {fmt(p, '.3f')}" for s, p in knee.probes)
    if knee.rate_scale is None:
        return f"TTFT p90 ≥ 2 × unloaded ({knee.unloaded_ttft_p90:.3f} s) at every probe ({probes})."
    beyond = "" if knee.crossed else " (never crossed: the knee lies beyond the last probe)"
    return (
        f"Knee of `{BASELINE}`: TTFT p90 {knee.unloaded_ttft_p90:.3f} s unloaded, below 2× that "
        f"({knee.threshold:.3f} s) up to rate ×{knee.rate_scale:.3g} ({knee.rate_rps:.2f} req/s){beyond}. "
        f"Probes (rate → p90 s): {probes}."
    )


def targets_table(verdicts: Sequence[Verdict]) -> list[str]:
    lines = ["| target | at | value | target | status | why (numbers) |", "|---|---|--:|---|---|---|"]
    for v in verdicts:
        lines.append(f"| {v.target} | {v.at} | {fmt(v.value, '.3g')} | {v.limit} | {status(v)} | {v.why} |")
    return lines


def runs_table(summaries: Sequence[dict[str, Any]], labels: dict[float, str]) -> list[str]:
    lines = [
        "| load | rate× | preset | hit | hit ÷ capacity | TTFT p50 s | p90 s | p99 s | p90 ÷ gie | tok/s "
        "| imbalance | busy imbalance | shed (scheduler) | too long | wall s |",
        "|---|--:|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    gie = {s["rate_scale"]: s["ttft_p90"] for s in summaries if s["policy"] == BASELINE}
    order = {p: i for i, p in enumerate(ALL_POLICIES)}  # config files (side by side) after the presets
    for s in sorted(summaries, key=lambda s: (s["rate_scale"], order.get(s["policy"], len(order)), s["policy"])):
        cap = s["capacity_hit_ratio"]
        hit_cap = s["hit_ratio"] / cap if cap and s["hit_ratio"] is not None else None
        p90 = s["ttft_p90"]
        vs_gie = p90 / gie[s["rate_scale"]] if p90 is not None and gie.get(s["rate_scale"]) else None
        name = f"**{s['policy']}**" if s["policy"] == DEFAULT else s["policy"]
        lines.append(
            f"| {labels[s['rate_scale']]} | {s['rate_scale']:.3g} | {name} | {fmt(s['hit_ratio'], '.1%')} | "
            f"{fmt(hit_cap, '.2f')} | {fmt(s['ttft_p50'], '.3f')} | {fmt(p90, '.3f')} | {fmt(s['ttft_p99'], '.3f')} | "
            f"{fmt(vs_gie, '.2f')} | {fmt(s['throughput_tok_s'], ',.0f')} | {fmt(s['imbalance'], '.2f')} | "
            f"{fmt(s.get('busy_imbalance'), '.2f')} | {s['shed'] - s['shed_too_long']} | {s['shed_too_long']} | {s['wall_s']:.1f} |"
        )
    return lines


def trace_section(
    trace: Trace, total: int, search: KneeSearch, summaries: list[dict[str, Any]], labels: dict[float, str],
    verdicts: list[Verdict], kv_tokens: int,
) -> list[str]:
    subset = f"first {len(trace.requests):,} of {total:,} requests" if len(trace.requests) < total else f"all {total:,} requests"
    vacuous = "" if search.bounds.capacity else (
        " **No prefix information in this trace**: both bounds are 0 and the hit target is vacuous; "
        "every hit ratio here is 0 by construction."
    )
    return [
        f"## {trace.name}",
        "",
        f"{subset}, {trace.duration:,.0f} s at ×1 ({trace.mean_rate:.2f} req/s). Bounds on this subset: "
        f"ideal (unlimited cache) {search.bounds.ideal:.1%}, capacity (one LRU as large as the cluster's "
        f"{kv_tokens:,} KV tokens) {search.bounds.capacity:.1%}.{vacuous} {knee_text(search.knee, trace)}",
        "",
        f"Targets for `{DEFAULT}`:",
        "",
        *targets_table(verdicts),
        "",
        "Every preset (p90 ÷ gie = TTFT p90 ÷ gie-default's at the same rate; shed (scheduler) excludes "
        "requests the engine refused as longer than `max_model_len`, counted under too long):",
        "",
        *runs_table(summaries, labels),
        "",
    ]


def verdict_lines(per_trace: dict[str, list[Verdict]]) -> list[str]:
    counts = {True: 0, False: 0, None: 0}
    lines = []
    for name, verdicts in per_trace.items():
        for v in verdicts:
            counts[v.met] += 1
        missed = [f"{v.target} at {v.at} ({fmt(v.value, '.3g')}, {v.limit})" for v in verdicts if v.met is False]
        na = sum(v.met is None for v in verdicts)
        met = sum(v.met is True for v in verdicts)
        tail = f"; missed: {'; '.join(missed)}" if missed else ""
        lines.append(f"- `{name}`: {met} met, {len(missed)} missed, {na} n/a{tail}")
    head = f"**{counts[True]} targets met, {counts[False]} missed, {counts[None]} not applicable** (`{DEFAULT}`, all traces)."
    return ["## Verdict", "", head, "", *lines, "", LEVERS, ""]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--traces", type=Path, default=TRACES_DIR,
                        help="directory of traces (default traces/: python bench/fetch_traces.py fills it)")
    parser.add_argument("--match", action="append", default=None, help="only traces whose file name contains this")
    parser.add_argument("--profile", default="llama-3.1-8b-h100", help="engine profile, or a mix p:4,q:4 (8 engines)")
    parser.add_argument("--policies", default=",".join(ALL_POLICIES), help="comma-separated presets or config files (default: all presets)")
    parser.add_argument("--max-requests", type=int, default=3000, help="requests per trace (its head; 0 = all)")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--out", type=Path, default=HERE / "replay.md")
    parser.add_argument("--check", action="store_true", help="exit 1 if a target is missed")
    parser.add_argument("--quick", action="store_true", help="only ×1 and the knee (no middle, past-knee, unloaded runs)")
    args = parser.parse_args()
    global QUICK
    QUICK = args.quick
    limit = args.max_requests or None
    profile = args.profile
    policies = [p.strip() for p in args.policies.split(",") if p.strip()]
    unknown = [p for p in policies if p not in ALL_POLICIES and not p.endswith((".yaml", ".yml"))]  # configs: side by side
    if unknown or DEFAULT not in policies or BASELINE not in policies:
        parser.error(f"--policies must name presets incl. {DEFAULT} and {BASELINE}; unknown: {unknown}")
    try:
        spec = cluster(profile)
    except ValueError as exc:
        parser.error(str(exc))

    files = sorted(
        (p for p in require(args.traces).iterdir() if (p.suffix in (".jsonl", ".csv") or p.name.endswith(".gz"))
         and (not args.match or any(m in p.name for m in args.match))),
        key=lambda p: -p.stat().st_size,  # biggest first: the knee searches finish together
    )
    if not files:
        parser.error(f"no trace in {args.traces} matches {args.match}")
    started = time.perf_counter()
    searches: dict[Path, KneeSearch] = {}
    runs: dict[Path, list[Future[Outcome]]] = {}
    with executor(args.jobs) as pool:
        # knee searches first; each trace's runs are queued as soon as its knee is known
        knees = {pool.submit(search_knee, path, limit, profile): path for path in files}
        for done in as_completed(knees):
            path = knees[done]
            searches[path] = done.result()
            jobs = plan(searches[path], load(path, limit, profile)[0].mean_rate, policies)
            runs[path] = [pool.submit(run_task, path, limit, profile, job) for job in jobs]
            print(f"{path.name}: knee at {time.perf_counter() - started:.0f} s, {len(jobs)} runs queued", flush=True)
        outcomes = {path: [f.result() for f in futures] for path, futures in runs.items()}

    body: list[str] = []
    raw: dict[str, Any] = {}
    per_trace: dict[str, list[Verdict]] = {}
    for path in sorted(files, key=lambda p: p.name):
        search = searches[path]
        trace = load(path, limit, profile)[0]
        labels = load_levels(search.knee.rate_scale)
        unloaded = unloaded_scale(trace.mean_rate)
        labels[unloaded] = "unloaded"
        mine = outcomes[path] + list(search.reused.values())
        summaries = [o.summary for o in mine]
        loads = Loads(search.knee.rate_scale, unloaded)
        verdicts = evaluate(summaries, loads, DEFAULT, BASELINE, REFERENCE)
        if LLM_D in policies:
            verdicts += versus(summaries, loads, DEFAULT, LLM_D)
        per_trace[trace.name] = verdicts
        total = len(read_trace(path, None).requests)
        body += trace_section(trace, total, search, summaries, labels, verdicts, spec.kv_tokens())
        plot_dir = args.out.with_suffix("") / path.name.removesuffix(".gz").rsplit(".", 1)[0]
        plot_dir.mkdir(parents=True, exist_ok=True)
        write_plots(plot_dir, [(o.job.label, o.run) for o in mine if o.job.rate_scale == search.knee.rate_scale],
                    PlotContext(trace.name, search.bounds))
        body += [f"Plots of the knee runs: `{plot_dir.relative_to(HERE.parent) if plot_dir.is_relative_to(HERE.parent) else plot_dir}/` (written by the script, not committed).", ""]
        raw[path.name] = {
            "knee": dataclasses.asdict(search.knee),
            "runs": summaries,
            "targets": [dataclasses.asdict(v) for v in verdicts],
        }

    wall = time.perf_counter() - started
    command = " ".join(["python bench/replay_all.py", *sys.argv[1:]])
    header = [
        "# `epp replay`: issue #10's routing targets, every preset on the public traces",
        "",
        f"Generated by `{command}` in {wall:.0f} s ({platform.python_implementation()} "
        f"{platform.python_version()}, {args.jobs} worker processes on a shared 2-core machine). "
        + (f"**Each trace is cut to its first {limit:,} requests** (bounds, knee and runs on that subset) "
           "so the whole script runs in ~15 min; full traces give other knees (bench/RESULTS.md). "
           if limit else "Full traces. ")
        + f"Simulated engines {spec.label} (calibrated H100 latency model, "
        "vLLM-shaped scheduler and prefix cache; no policy is told the profile), metrics polled every 50 ms "
        "of virtual time, seed 0. "
        f"`{DEFAULT}` is what `epp serve` runs without a config (docs/routing.md). Loads come from "
        f"`{BASELINE}`'s knee (TTFT p90 = 2 × its unloaded p90). Hit = cached ÷ prompt tokens as the engines "
        "saw them; capacity bound = one LRU cache as large as the whole cluster's KV cache, in trace order.",
        "",
    ]
    args.out.write_text("\n".join(header + verdict_lines(per_trace) + body))
    args.out.with_suffix("").mkdir(exist_ok=True)
    (args.out.with_suffix("") / "summary.json").write_text(json.dumps(raw, indent=2, default=str) + "\n")
    print(f"wrote {args.out} in {wall:.0f} s", flush=True)
    missed = any(v.met is False for verdicts in per_trace.values() for v in verdicts)
    return 1 if args.check and missed else 0


if __name__ == "__main__":
    sys.exit(main())
