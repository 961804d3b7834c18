"""Soak epp: N minutes of mixed traffic through real Envoys → ``epp serve`` → ``epp sim`` engines, with faults.

Faults on a fixed schedule (fractions of the run): epp SIGTERM (graceful drain) and SIGKILL restarts, an
engine killed and restarted (twice), an engine's /metrics answering garbage, then hanging, an engine slowed
10x, and the endpoints file changing membership. Prints the report (markdown) and writes it as JSON.
Everything runs on 127.0.0.1, at a bounded rate, and is stopped by PID when the run ends.

    python bench/soak.py                 # 10 minutes
    python bench/soak.py --minutes 2 --rate 8

``--closed-loop`` runs issue #16's engine-kill test instead: six clients in a closed loop, three engines,
one SIGKILLed for 30 s of 150 then restarted (``--fault hang``: SIGSTOPped then resumed; ``--fault slow``:
10x slower), with and without the shipped Envoy retry policy, once per ``--policy`` (a preset name;
``none`` = no config, epp's default), and prints the per-phase failure table:

    nice -n 10 python bench/soak.py --closed-loop --policy none --policy gie-default
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import logging
import sys
import tempfile
from pathlib import Path

import orjson

from epp.soak import closed_loop
from epp.soak.report import render
from epp.soak.runner import SoakConfig, run_soak


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--rate", type=float, default=SoakConfig.rate, help="requests per second")
    parser.add_argument("--max-inflight", type=int, default=SoakConfig.max_inflight)
    parser.add_argument("--engines", type=int, default=SoakConfig.engines, help="engines in the pool (+1 spare)")
    parser.add_argument("--seed", type=int, default=SoakConfig.seed)
    parser.add_argument("--workdir", type=Path, default=None, help="keep logs here (default: a temp dir)")
    parser.add_argument("--json", type=Path, default=None, help="write the report here as JSON")
    parser.add_argument("--closed-loop", action="store_true", help="run the closed-loop engine-kill test instead")
    parser.add_argument("--policy", action="append", default=None,
                        help="closed loop: preset to run (repeatable; 'none' = no config); default: none")
    parser.add_argument("--gateway", choices=("both", "no-retries", "retry-policy"), default="both",
                        help="closed loop: which gateway set-ups to run")
    parser.add_argument("--fault", action="append", choices=closed_loop.FAULTS, default=None,
                        help="closed loop: how the engine breaks (repeatable; default: kill)")
    parser.add_argument("--picker-arg", action="append", default=[],
                        help="closed loop: extra epp serve flag, e.g. --picker-arg=--endpoint-health=false")
    parser.add_argument("--picker-tree", type=Path, default=None,
                        help="closed loop: run epp serve from this source tree (a baseline, e.g. a checkout of main)")
    args = parser.parse_args()
    if args.closed_loop:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)
        return run_closed_loops(args)
    if not 0 < args.minutes <= 120 or not 0 < args.rate <= 200:
        parser.error("--minutes must be in (0, 120] and --rate in (0, 200]")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)
    config = SoakConfig(duration=args.minutes * 60, rate=args.rate, max_inflight=args.max_inflight,
                        engines=args.engines, seed=args.seed)
    with tempfile.TemporaryDirectory(prefix="epp-soak-") as tmp:
        workdir = args.workdir or Path(tmp)
        report = asyncio.run(run_soak(config, workdir))
    print(render(report))
    if args.json is not None:
        args.json.write_bytes(orjson.dumps(dataclasses.asdict(report), default=str, option=orjson.OPT_INDENT_2))
    return 0 if not report.unexplained else 1


def run_closed_loops(args: argparse.Namespace) -> int:
    """Each (policy, fault, gateway) run in turn, each in its own work directory; one table at the end."""
    retries = {"both": [False, True], "no-retries": [False], "retry-policy": [True]}[args.gateway]
    reports = []
    runs = [(policy, fault, retry) for policy in args.policy or ["none"] for fault in args.fault or ["kill"] for retry in retries]
    for policy, fault, retry in runs:
        config = closed_loop.ClosedLoopConfig(policy=None if policy == "none" else policy, retries=retry, fault=fault,
                                              picker_args=tuple(args.picker_arg), picker_tree=args.picker_tree)
        with tempfile.TemporaryDirectory(prefix="epp-closed-loop-") as tmp:
            report = asyncio.run(closed_loop.run_closed_loop(config, args.workdir or Path(tmp)))
        reports.append(report)
        print(closed_loop.render([report]), flush=True)
    print("\n" + closed_loop.render(reports))
    if args.json is not None:
        args.json.write_bytes(orjson.dumps([dataclasses.asdict(r) for r in reports], default=str,
                                           option=orjson.OPT_INDENT_2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
