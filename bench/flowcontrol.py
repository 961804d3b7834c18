"""Flow control under overload (issue #20): two priority bands at twice gie-default's knee.

A public trace's first ``--max-requests`` requests, every other one at priority 100 and the rest at
0, replayed offline on ``--engines`` simulated engines through the director ``epp serve`` runs:

1. gie-default's knee: the rate scale where its TTFT p90 doubles (``epp.replay.knee``, on the first
   ``--knee-requests`` requests, priorities as above — gie-default does not look at them);
2. gie-default at 2× that scale (it queues nothing in the picker: every request goes to an engine);
3. ``--config`` (default: llm-d's flow-control guide configuration, ``bench/configs``) at the same
   scale: requests wait in the picker's bands while the pool is saturated.

Prints per-band requests / completed / shed / TTFT p50 / p90 for both, the high band's TTFT p90 ratio
(target ≤ 0.2), whether every request was answered or refused with a status, and the most requests and
bytes the flow controller ever held next to the configuration's bound.

``--detector utilization`` replaces the config's saturation detector by GIE's ``utilization-detector``
with its defaults (for configs whose detector plugin this build lacks).

    python bench/flowcontrol.py [--trace PATH] [--max-requests 2000] [--knee-requests 800] [--engines 8]
                                [--config FILE] [--detector as-configured|utilization] [--knee SCALE]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from epp._util.clock import VirtualClock
from epp.flowcontrol import FlowController, flow_control_settings
from epp.config import load_config
from epp.replay.knee import find_knee
from epp.replay.offline import ClusterSpec, OfflineReplay
from epp.replay.policies import resolve
from epp.replay.summary import summarize
from epp.replay.traces import Trace, read_trace

HERE = Path(__file__).parent
GUIDE = HERE / "configs" / "llm-d-flow-control-guide.yaml"
TRACE = Path("/work/shared/traces/mooncake_fast25_conversation_first30min.jsonl")
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
    parser.add_argument("--json", type=Path, default=None, help="also write the summaries here")
    args = parser.parse_args()
    cluster = ClusterSpec(engines=args.engines)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        config = args.config if args.detector == "as-configured" else with_utilization_detector(args.config, Path(tmp))
        settings = flow_control_settings(load_config(config))
        if settings is None:
            print(f"{config}: flow control is not enabled (featureGates: [flowControl] and a flowControl section)")
            return 2
        knee = args.knee
        if knee is None:
            small = two_bands(read_trace(args.trace, args.knee_requests))
            found = find_knee("gie-default", small.mean_rate, lambda s: run(small, "gie-default", s, cluster)[0]["ttft_p90"])
            if found.rate_scale is None:
                print("gie-default is past its knee at every probed rate")
                return 1
            knee = found.rate_scale
            print(f"gie-default knee: rate ×{knee:.3g} (TTFT p90 {found.unloaded_ttft_p90:.3f} s unloaded)")
        trace = two_bands(read_trace(args.trace, args.max_requests))
        scale = 2 * knee
        print(f"{trace.name}: {len(trace.requests)} requests, bands {BANDS}, {args.engines} engines, rate ×{scale:.3g} "
              f"(2 × gie-default's knee)")
        summaries = {}
        for policy in ("gie-default", str(config)):
            summary, driver = run(trace, policy, scale, cluster)
            summaries[policy] = summary
            answered = summary["completed"] + summary["shed"] == summary["requests"]
            print(f"{Path(policy).name}: TTFT p90 {summary['ttft_p90']}, every request answered or refused: {answered}, "
                  f"replay {summary['wall_s']:.1f} s")
            print(band_rows(summary))
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
