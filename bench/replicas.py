"""Active-active picker replicas on a public trace: own, shared and precise prefix views, by replay.

Every number comes from ``epp replay`` itself (``--replicas``, ``--shared-prefix-view``; the
precise rows are a policy whose prefix producer is ``precise-prefix-cache-producer``, fed every
engine's KV events by replay). Per policy, five runs of the same trace on the same engines:

* 1 replica;
* N replicas, each with its own learned prefix view (what active-active epp does without Redis);
* N replicas sharing one learned view (what ``ReplicatedPrefixIndex`` over Redis converges to);
* N replicas, each with a precise view built from engine KV events (``<policy>+precise``);
* N replicas of the policy itself sharing state (``--shared-state``: prefix view, TTFT ledger and
  learned latency, exchanged every 25 ms of virtual time as ``epp serve --shared-state-url`` does).

The first three runs use the policy with an approximate prefix producer, the last with a precise
one: the policy itself where it already has that producer, else its config with the producer swapped
(the shipped ``default`` reads KV events, so its own/shared rows run ``default+approx``; a policy
whose scorer creates its own producer gets a precise producer added and named by the scorer),
written to ``--workdir``. The same runs from the shell, per policy P (P+approx / P+precise where a
variant was written)::

    epp replay TRACE --policy P+approx --max-requests M --rate-scale X --json
    epp replay TRACE --policy P+approx --replicas N [--shared-prefix-view] --max-requests M --rate-scale X --json
    epp replay TRACE --policy WORKDIR/P+precise.yaml --replicas N --max-requests M --rate-scale X --json
    epp replay TRACE --policy P --replicas N --shared-state --max-requests M --rate-scale X --json

    python bench/replicas.py TRACE [--policy gie-default --policy default] [--replicas 2]
        [--max-requests 1500] [--rate-scale 2.83] [--jobs 2]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path
from typing import Any

import yaml

from epp.engine.config import EngineConfig
from epp.replay.offline import ClusterSpec
from epp.replay.replicas import Replicas
from epp.replay.runner import Job, run_jobs, trace_bounds
from epp.replay.traces import read_trace
from epp.config.presets import PRESETS

APPROX, PRECISE, SCORER = "approx-prefix-cache-producer", "precise-prefix-cache-producer", "prefix-cache-scorer"


APPROX_KEYS = {"autoTune", "blockSizeTokens", "maxPrefixBlocksToMatch", "maxPrefixTokensToMatch", "lruCapacityPerServer"}
"""The precise producer's parameters the approximate one also takes (the rest are about KV events)."""


def with_producer(preset: str, kind: str, workdir: Path) -> str:
    """``preset`` as a policy whose prefix producer is ``kind`` (``APPROX`` or ``PRECISE``): the preset
    itself when it already is, else its config with the producer swapped (or, for a policy whose
    scorer creates its own approximate producer, a precise one added and named by the scorer),
    written to ``workdir``."""
    config: dict[str, Any] = yaml.safe_load(PRESETS[preset])
    plugins: list[dict[str, Any]] = config["plugins"]
    producers = [p for p in plugins if p["type"] in (APPROX, PRECISE)]
    if all(p["type"] == kind for p in producers) and (producers or kind == APPROX):
        return preset
    for p in producers:
        p["type"] = kind
        if kind == APPROX:
            p["parameters"] = {k: v for k, v in p.get("parameters", {}).items() if k in APPROX_KEYS}
    if not producers:  # a scorer that creates its own producer: give it a precise one to read instead
        scorers = [p for p in plugins if p["type"] == SCORER]
        if not scorers:
            raise SystemExit(f"policy {preset!r} has no prefix producer to make precise")
        plugins.insert(0, {"type": PRECISE, "name": "precise"})
        for s in scorers:
            s.setdefault("parameters", {})["prefixMatchInfoProducerName"] = "precise"
    path = workdir / f"{preset}+{'precise' if kind == PRECISE else 'approx'}.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return str(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("trace", type=Path)
    parser.add_argument("--policy", action="append", choices=sorted(PRESETS), help="default: gie-default, default")
    parser.add_argument("--replicas", type=int, default=2)
    parser.add_argument("--max-requests", type=int, default=1500)
    parser.add_argument("--rate-scale", type=float, default=2.83)
    parser.add_argument("--engines", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--workdir", type=Path, default=None, help="where the precise configs go (default: a temp dir)")
    args = parser.parse_args()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="epp-replicas-"))
    workdir.mkdir(parents=True, exist_ok=True)
    trace = read_trace(str(args.trace), args.max_requests)
    cluster = ClusterSpec(engines=args.engines, engine=EngineConfig(seed=args.seed))
    n = args.replicas
    jobs: list[Job] = []
    for policy in args.policy or ["gie-default", "default"]:
        approx = with_producer(policy, APPROX, workdir)
        jobs += [
            Job(approx, args.rate_scale, args.seed, Replicas(1)),
            Job(approx, args.rate_scale, args.seed, Replicas(n)),
            Job(approx, args.rate_scale, args.seed, Replicas(n, shared_prefix_view=True)),
            Job(with_producer(policy, PRECISE, workdir), args.rate_scale, args.seed, Replicas(n)),
            Job(policy, args.rate_scale, args.seed, Replicas(n, shared_state=True)),
        ]
    outcomes = run_jobs(trace, jobs, cluster, trace_bounds(trace, cluster), args.jobs, lambda i, k: None)
    print(f"{trace.name}: {len(trace.requests):,} requests, rate ×{args.rate_scale:g}, {args.engines} engines "
          f"{cluster.engine.profile}, seed {args.seed}; capacity bound {outcomes[0].summary['capacity_hit_ratio']:.1%}")  # fmt: skip
    print("\n| policy | replicas | view | hit | TTFT p50 s | p90 s | p99 s | p90 vs 1 replica | KV batches | wall s |")
    print("|---|--:|---|--:|--:|--:|--:|--:|--:|--:|")
    base: dict[str, Any] = {}
    for o in outcomes:
        s = o.summary
        name = Path(s["policy"]).stem if s["policy"].endswith(".yaml") else s["policy"]
        base = s if s["replicas"] == 1 else base
        view = "precise" if s["kv_event_batches"] and "state" not in s["prefix_view"] else s["prefix_view"]
        print(f"| {name} | {s['replicas']} | {view} | {s['hit_ratio']:.1%} | {s['ttft_p50']:.3f} | {s['ttft_p90']:.3f} "
              f"| {s['ttft_p99']:.3f} | ×{s['ttft_p90'] / base['ttft_p90']:.2f} | {s['kv_event_batches']:,} "
              f"| {s['wall_s']:.0f} |")  # fmt: skip


if __name__ == "__main__":
    main()
