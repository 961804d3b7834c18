"""Prefill/decode disaggregation on the public conversation trace, side by side in one run (issue #20).

On 8 simulated engines of one hardware profile (``llama-3.1-8b-h100``), with llm-d's sim P/D config
(``bench/pd/pd-prefix.yaml``: prefix + queue scorers in a prefill and a decode profile):

1. the knee of the aggregated pool (8 unlabelled engines, where the decode profile sees every engine and
   the prefill profile none, so nothing is disaggregated): the rate scale where TTFT p90 reaches twice its
   unloaded value, as ``epp replay --find-knee``;
2. at that rate: the aggregated pool, then 4 prefill + 4 decode engines (``--roles prefill:4,decode:4``)
   with ``always-disagg-pd-decider`` (``bench/pd/pd-always.yaml``, as llm-d's P/D guide runs) and with
   ``prefix-based-pd-decider`` at several ``nonCachedTokens`` (16 is the upstream sim config's);
3. where the prefix decider beats always-disaggregate: over the requests it kept on the decode engine
   (the cached follow-up turns), their TTFT under each policy.

Prints a Markdown report (the section appended to bench/RESULTS.md). The P/D model's assumptions are in
``epp.replay.offline`` (KV transfer takes no time: optimistic for P/D).

    python bench/pd.py [--trace FILE] [--max-requests N] [--thresholds 16,256,1024,4096] [--jobs J] [--rate-scale X] [--prefill-engines P]
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
from pathlib import Path
from typing import Any

from epp.engine.config import EngineConfig
from fetch_traces import TRACES_DIR, require  # bench/ is on sys.path when run as a script
from epp.replay.knee import find_knee, unloaded_scale
from epp.replay.offline import ClusterSpec, RequestRecord
from epp.replay.runner import Job, Outcome, run_jobs, run_one, trace_bounds
from epp.replay.summary import percentile
from epp.replay.traces import read_trace

HERE = Path(__file__).resolve().parent
TRACE = TRACES_DIR / "mooncake_fast25_conversation_first30min.jsonl"  # python bench/fetch_traces.py
PREFIX_CONFIG = HERE / "pd" / "pd-prefix.yaml"
ALWAYS_CONFIG = HERE / "pd" / "pd-always.yaml"
ENGINE = EngineConfig(profile="llama-3.1-8b-h100")
AGGREGATED = ClusterSpec(engines=8, engine=ENGINE)


def threshold_config(directory: Path, tokens: int) -> str:
    """pd-prefix.yaml with ``nonCachedTokens`` set to ``tokens``."""
    text = PREFIX_CONFIG.read_text().replace("nonCachedTokens: 16", f"nonCachedTokens: {tokens}")
    path = directory / f"pd-prefix-{tokens}.yaml"
    path.write_text(text)
    return str(path)


def ttft(records: list[RequestRecord], keep: list[int]) -> list[float]:
    return sorted(records[i].first_token - records[i].arrival for i in keep if records[i].first_token is not None)  # type: ignore[operator]


def fmt(value: Any, spec: str) -> str:
    return "–" if value is None or (isinstance(value, float) and math.isnan(value)) else format(value, spec)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trace", type=Path, default=TRACE,
                        help="the conversation trace (default: traces/ in the repository, from bench/fetch_traces.py)")
    parser.add_argument("--max-requests", type=int, default=2000)
    parser.add_argument("--thresholds", default="16,256,1024,4096")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--prefill-engines", type=int, default=4, help="of the 8 engines, how many prefill (the rest decode)")
    parser.add_argument("--rate-scale", type=float, default=None, help="run at this rate instead of the aggregated knee")
    args = parser.parse_args(argv)
    trace = read_trace(str(require(args.trace)), args.max_requests or None)
    thresholds = [int(t) for t in args.thresholds.split(",")]
    prefills = args.prefill_engines
    disaggregated = ClusterSpec(engines=8, engine=ENGINE, roles=("prefill",) * prefills + ("decode",) * (8 - prefills))
    bounds = trace_bounds(trace, AGGREGATED)

    def probe(scale: float) -> float | None:
        outcome = run_one(trace, Job(str(PREFIX_CONFIG), scale), AGGREGATED, bounds, lambda n: None)
        print(f"  knee probe ×{scale:.3g}: TTFT p90 {outcome.summary['ttft_p90']}", file=sys.stderr)
        return outcome.summary["ttft_p90"]  # type: ignore[no-any-return]

    if args.rate_scale is None:
        knee = find_knee("aggregated", trace.mean_rate, probe)
        scale = knee.rate_scale or unloaded_scale(trace.mean_rate)
        where = (f"aggregated knee ×{scale:.3g} ({knee.rate_rps or trace.mean_rate * scale:.2f} req/s; "
                 f"unloaded TTFT p90 {knee.unloaded_ttft_p90:.3f} s)")
    else:
        scale = args.rate_scale
        where = f"rate ×{scale:g} ({trace.mean_rate * scale:.2f} req/s)"
    with tempfile.TemporaryDirectory() as tmp:
        policies = [("always", str(ALWAYS_CONFIG))] + [(f"prefix ≥{t}", threshold_config(Path(tmp), t)) for t in thresholds]
        aggregated = run_one(trace, Job(str(PREFIX_CONFIG), scale), AGGREGATED, bounds, lambda n: None)
        jobs = [Job(spec, scale) for _, spec in policies]
        outcomes: list[Outcome] = run_jobs(trace, jobs, disaggregated, bounds, args.jobs, lambda i, n: None)
    rows = [("8 aggregated", "—", aggregated)] + [(f"{prefills} P + {8 - prefills} D", name, o) for (name, _), o in zip(policies, outcomes)]
    n = len(trace.requests)
    print(f"**{args.trace.name}**, first {n:,} requests, 8 × {ENGINE.profile}; {where}.\n")
    print("| engines | decider | disaggregated | hit | TTFT p50 | TTFT p90 | TPOT p50 | TPOT p90 | E2E p90 | shed |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for engines, decider, o in rows:
        s = o.summary
        print(f"| {engines} | {decider} | {s['disaggregated'] / n:.0%} | {s['hit_ratio']:.1%} | {fmt(s['ttft_p50'], '.3f')} | "
              f"{fmt(s['ttft_p90'], '.3f')} | {fmt(s['tpot_p50'], '.4f')} | {fmt(s['tpot_p90'], '.4f')} | "
              f"{fmt(s['e2e_p90'], '.2f')} | {s['shed']} |")
    always = outcomes[0].run.records
    print("\nRequests the prefix decider kept on their decode engine (its cached follow-up turns), their TTFT "
          "there vs. under always-disaggregate (same requests, same rate):\n")
    print("| decider | kept local | their TTFT p50 / p90 | same requests under always p50 / p90 | all requests TTFT p90 vs always |")
    print("|---|---:|---:|---:|---:|")
    for (name, _), o in zip(policies[1:], outcomes[1:]):
        kept = [i for i, r in enumerate(o.run.records) if r.prefill_engine < 0 and r.engine >= 0]
        mine, theirs = ttft(o.run.records, kept), ttft(always, kept)
        print(f"| {name} | {len(kept):,} | {fmt(percentile(mine, 50), '.3f')} / {fmt(percentile(mine, 90), '.3f')} | "
              f"{fmt(percentile(theirs, 50), '.3f')} / {fmt(percentile(theirs, 90), '.3f')} | "
              f"{fmt(o.summary['ttft_p90'], '.3f')} vs {fmt(outcomes[0].summary['ttft_p90'], '.3f')} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
