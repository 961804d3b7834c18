"""Flow control under overload (issue #20): two priority bands at twice gie-default's knee.

A public trace's first ``--max-requests`` requests, every other one at priority 100 and the rest at
0, replayed offline on ``--engines`` simulated engines through the director ``epp serve`` runs:

1. gie-default's knee: the rate scale where its TTFT p90 doubles (``epp.replay.knee``, on the first
   ``--knee-requests`` requests, priorities as above — gie-default does not look at them);
2. gie-default at 2× that scale (it queues nothing in the picker: every request goes to an engine);
3. ``--config`` (default: llm-d's flow-control guide configuration, ``bench/configs``) at the same
   scale: requests wait in the picker's bands while the pool is saturated. The guide's
   ``maxConcurrency: 132`` is "upstream's value for 8×Qwen3-32B on 16×H100 — calibrate for your
   fleet" (guides/flow-control/tuning.md); ``--max-concurrency calibrate`` (default) derives it for this
   fleet as the guide's ``tuning_wizard.py`` does: N = min(compute limit = Little's law at gie-default's
   knee — throughput per engine (the arrival rate, which the pool keeps up with at its knee) × mean
   end-to-end latency —, memory limit = the KV-cache CLT bound over
   the trace's input/output lengths, z = 2, 90 % paged-attention efficiency, prefix caching on), plus a
   lookahead buffer B = min(⌈max_num_batched_tokens ÷ mean input⌉, ⌈0.15 N⌉). Nothing else in the
   config changes.

Prints per-band requests / completed / shed / TTFT p50 / p90 for both, the high band's TTFT p90 ratio
(target ≤ 0.2), whether every request was answered or refused with a status, and the most requests and
bytes the flow controller ever held next to the configuration's bound.

``--detector utilization`` replaces the config's saturation detector by GIE's ``utilization-detector``
with its defaults.

    python bench/flowcontrol.py [--trace PATH] [--max-requests 2000] [--knee-requests 800] [--engines 8]
                                [--config FILE] [--detector as-configured|utilization] [--knee SCALE]
                                [--max-concurrency calibrate|as-configured|N]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from fetch_traces import TRACES_DIR, require  # bench/ is on sys.path when run as a script

from epp._util.clock import VirtualClock
from epp.flowcontrol.build import flow_control_settings
from epp.flowcontrol.controller import FlowController
from epp.config import ConfigError, load_config, load_scheduler
from epp.replay.knee import find_knee
from epp.replay.offline import ClusterSpec, OfflineReplay
from epp.replay.policies import resolve
from epp.replay.summary import summarize
from epp.replay.traces import Trace, read_trace

HERE = Path(__file__).parent
GUIDE = HERE / "configs" / "llm-d-flow-control-guide.yaml"
TRACE = TRACES_DIR / "mooncake_fast25_conversation_first30min.jsonl"  # python bench/fetch_traces.py
BANDS = (100, 0)


def two_bands(trace: Trace) -> Trace:
    requests = [dataclasses.replace(r, priority=BANDS[i % 2]) for i, r in enumerate(trace.requests)]
    return dataclasses.replace(trace, requests=requests)


def run(trace: Trace, policy: str, scale: float, cluster: ClusterSpec) -> tuple[dict[str, Any], OfflineReplay]:
    resolved = resolve(policy)
    clock = VirtualClock()
    driver = OfflineReplay(trace.requests, [resolved.build(clock, 0)], cluster, clock, scale,
                           admission=resolved.admission)
    result = driver.run()
    return summarize(result, resolved.label, scale, 0.0, 0.0), driver


def with_utilization_detector(config: Path, workdir: Path) -> Path:
    """``config`` with its flowControl.saturationDetector pointing at a default utilization-detector."""
    text = config.read_text()
    text = re.sub(r"(?m)^- type: concurrency-detector\n(  parameters:\n(    .*\n)*)?", "- type: utilization-detector\n", text)
    text = text.replace("pluginRef: concurrency-detector", "pluginRef: utilization-detector")
    out = workdir / config.name
    out.write_text(text)
    return out


def wizard(throughput: float, latency: float, cluster: ClusterSpec, trace: Trace) -> tuple[int, str]:
    """llm-d's tuning_wizard.py: gateway maxConcurrency = min(compute, memory) limit + lookahead buffer."""
    compute = math.floor(throughput * latency)
    isl = [r.prompt.length for r in trace.requests]
    osl = [r.output_tokens for r in trace.requests]
    isl_mean, isl_std, osl_mean, osl_std = statistics.mean(isl), statistics.pstdev(isl), statistics.mean(osl), statistics.pstdev(osl)
    engine = cluster.engine
    available = engine.total_gpu_blocks * engine.block_size * 0.90
    mu = isl_mean + osl_mean / 2.0
    sigma = math.sqrt(isl_std**2 + osl_std**2 / 3.0 + osl_mean**2 / 12.0)
    b = 2.0 * sigma
    memory = int(((-b + math.sqrt(b * b + 4 * mu * available)) / (2 * mu)) ** 2)
    active = max(1, min(compute, memory))
    buffer = max(1, min(math.ceil(engine.max_num_batched_tokens / max(1.0, isl_mean)), math.ceil(active * 0.15)))
    why = (f"compute limit {compute} (Little's law: {throughput:.3f} req/s per engine × {latency:.2f} s), memory limit "
           f"{memory} (ISL {isl_mean:.0f}±{isl_std:.0f}, OSL {osl_mean:.0f}±{osl_std:.0f}, "
           f"{engine.total_gpu_blocks * engine.block_size} KV tokens), buffer {buffer}")
    return active + buffer, why


def calibrated(config: Path, max_concurrency: int, workdir: Path) -> Path:
    text = re.sub(r"maxConcurrency: \d+", f"maxConcurrency: {max_concurrency}", config.read_text())
    out = workdir / f"calibrated-{config.name}"
    out.write_text(text)
    return out


def band_rows(summary: dict[str, Any]) -> str:
    rows = []
    for priority, band in summary["by_priority"].items():
        p50, p90 = band["ttft_p50"], band["ttft_p90"]
        rows.append(f"  priority {priority:>4}: {band['requests']:5d} requests, {band['completed']:5d} completed, "
                    f"{band['shed']:5d} refused, TTFT p50 {p50 if p50 is None else round(p50, 3)} s, "
                    f"p90 {p90 if p90 is None else round(p90, 3)} s")
    return "\n".join(rows)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trace", type=Path, default=TRACE)
    parser.add_argument("--max-requests", type=int, default=2000)
    parser.add_argument("--knee-requests", type=int, default=800)
    parser.add_argument("--engines", type=int, default=8)
    parser.add_argument("--config", type=Path, default=GUIDE)
    parser.add_argument("--detector", choices=("as-configured", "utilization"), default="as-configured")
    parser.add_argument("--knee", type=float, default=None, help="skip the knee search: gie-default's knee scale")
    parser.add_argument("--max-concurrency", default="calibrate",
                        help="concurrency-detector maxConcurrency: calibrate (tuning wizard), as-configured, or a number")
    parser.add_argument("--json", type=Path, default=None, help="also write the summaries here")
    args = parser.parse_args()
    cluster = ClusterSpec(engines=args.engines)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        config = args.config if args.detector == "as-configured" else with_utilization_detector(args.config, Path(tmp))
        try:
            settings = flow_control_settings(load_config(config))
            resolve(str(config))
            load_scheduler(config)
        except (ConfigError, ValueError) as exc:
            print(f"cannot load {config}: {exc}\n(llm-d's guide needs concurrency-detector; --detector utilization "
                  "runs it with GIE's utilization-detector instead)")
            return 2
        if settings is None:
            print(f"{config}: flow control is not enabled (featureGates: [flowControl] and a flowControl section)")
            return 2
        knee = args.knee
        small = two_bands(read_trace(require(args.trace), args.knee_requests))
        if knee is None:
            found = find_knee("gie-default", small.mean_rate, lambda s: run(small, "gie-default", s, cluster)[0]["ttft_p90"])
            if found.rate_scale is None:
                print("gie-default is past its knee at every probed rate")
                return 1
            knee = found.rate_scale
            print(f"gie-default knee: rate ×{knee:.3g} (TTFT p90 {found.unloaded_ttft_p90:.3f} s unloaded)")
        if args.max_concurrency != "as-configured" and "maxConcurrency" in config.read_text():
            if args.max_concurrency == "calibrate":
                at_knee, driver = run(small, "gie-default", knee, cluster)
                done = [r for r in driver.records if r.finish is not None]
                # Little's law holds for the loaded, stationary phase: its throughput is the arrival rate
                # (at the knee the pool keeps up). Completions over a span that runs on to the last
                # finish would average in the drain, where nothing arrives, and undercount it (~14 %).
                arrivals = [r.arrival for r in driver.records]
                span = max(arrivals) - min(arrivals)
                latency = statistics.mean(r.finish - r.arrival for r in done)  # type: ignore[operator]
                value, why = wizard(len(done) / span / args.engines, latency, cluster, small)
                print(f"maxConcurrency {value} per engine (tuning wizard: {why})")
            else:
                value = int(args.max_concurrency)
            config = calibrated(config, value, Path(tmp))
        trace = two_bands(read_trace(require(args.trace), args.max_requests))
        scale = 2 * knee
        print(f"{trace.name}: {len(trace.requests)} requests, bands {BANDS}, {args.engines} engines, rate ×{scale:.3g} "
              f"(2 × gie-default's knee)")
        summaries = {}
        for policy in ("gie-default", str(config)):  # noqa: B007
            summary, driver = run(trace, policy, scale, cluster)
            summaries[policy] = summary
            answered = summary["completed"] + summary["shed"] == summary["requests"]
            print(f"{Path(policy).name}: TTFT p90 {summary['ttft_p90']}, every request answered or refused: {answered}, "
                  f"replay {summary['wall_s']:.1f} s")
            print(band_rows(summary))
            high = [r for r in driver.records if r.priority == BANDS[0] and r.first_token is not None and r.routed is not None]
            if high:
                wait = sorted(r.routed - r.arrival for r in high)  # type: ignore[operator]
                engine = sorted(r.first_token - r.routed for r in high)  # type: ignore[operator]
                print(f"  priority {BANDS[0]} TTFT split: picker wait p50 {wait[len(wait) // 2]:.3f} s p90 "
                      f"{wait[int(len(wait) * 0.9)]:.3f} s; engine p50 {engine[len(engine) // 2]:.3f} s p90 "
                      f"{engine[int(len(engine) * 0.9)]:.3f} s")
            admission = driver.directors[0].admission
            if isinstance(admission, FlowController):
                reasons = sorted({r.shed for r in driver.records if r.shed is not None})
                print(f"  refusals: {reasons or 'none'}; flow controller held at most {admission.peak_waiting} requests, "
                      f"{admission.peak_bytes} bytes (bound: {bound(settings)})")
    high = str(BANDS[0])
    base = summaries["gie-default"]["by_priority"][high]["ttft_p90"]
    fc = summaries[str(config)]["by_priority"][high]["ttft_p90"]
    if base and fc is not None:
        print(f"high band TTFT p90: {fc:.3f} s vs {base:.3f} s under gie-default = {fc / base:.3f}× (target ≤ 0.2)")
    print(f"bench wall {time.perf_counter() - started:.0f} s")
    if args.json:
        args.json.write_text(json.dumps(summaries, indent=2) + "\n")
    return 0


def bound(settings: Any) -> str:
    bands = list(settings.bands.values())
    requests = settings.max_requests or (sum(b.max_requests for b in bands) if all(b.max_requests for b in bands) else 0)
    count = f"{requests} requests" if requests else "no request-count limit"
    size = settings.max_bytes or sum(b.max_bytes for b in bands)
    return f"{count}, {size} bytes"


if __name__ == "__main__":
    sys.exit(main())
