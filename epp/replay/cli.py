"""``epp replay``: score routing policies on a request trace before deploying them.

Examples::

    epp replay trace.jsonl                                   # every preset, 8 engines, trace speed
    epp replay trace.jsonl --policy default --policy random --rate-scale 1,2 --out results/
    epp replay --synthetic shared-prefix --sp-groups 32 --policy gie-default --json
    epp replay trace.jsonl --policy my-config.yaml --policy gie-default --engines 16
    epp replay trace.jsonl --find-knee least-queue --max-requests 2000
    epp replay trace.jsonl --policy gie-default --replicas 2 --shared-prefix-view
    epp replay trace.jsonl --policy default --replicas 3 --shared-state
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from pathlib import Path

from epp._util.cli import duration
from epp.engine.config import PROFILES
from epp.replay.synthetic import WORKLOADS
from epp.shared.protocol import DEFAULT_PERIOD


def _rates(text: str) -> list[float]:
    try:
        rates = [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a comma-separated list of numbers: {text!r}") from None
    if not rates or any(r <= 0 for r in rates):
        raise argparse.ArgumentTypeError("rate scales must be positive numbers")
    return rates


def _roles(text: str) -> tuple[str, ...]:
    """``prefill:4,decode:4`` → one role per engine, in that order."""
    roles: list[str] = []
    for part in text.split(","):
        role, sep, count = part.strip().partition(":")
        if role not in ("prefill", "decode", "both") or not sep or not count.isdigit() or int(count) < 1:
            raise argparse.ArgumentTypeError(f"{part.strip()!r}: want ROLE:N with ROLE prefill, decode or both")
        roles += [role] * int(count)
    if not any(r in ("decode", "both") for r in roles):
        raise argparse.ArgumentTypeError("no engine can decode: give decode or both engines")
    return tuple(roles)


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be ≥ 1")
    return value


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.description = __doc__
    parser.add_argument("trace", nargs="?", help="Mooncake JSONL, epp JSONL or Azure CSV (optionally .gz)")
    parser.add_argument(
        "--policy", action="append", metavar="NAME|CONFIG.yaml",
        help="a scheduler preset, 'default' or an EndpointPickerConfig file; repeat to compare (default: every preset)",
    )
    parser.add_argument("--engines", type=_positive_int, default=8, help="simulated engines (default 8)")
    parser.add_argument(
        "--roles", type=_roles, default=None, metavar="ROLE:N[,ROLE:N...]",
        help="disaggregation roles of the engines (prefill, decode, both; counts sum to --engines), e.g. "
             "prefill:4,decode:4; engines are labelled llm-d.ai/role and a disaggregated request runs its "
             "prefill on the prefill engine first (offline only; default: aggregated)",
    )
    parser.add_argument(
        "--profile", default=None, metavar="PROFILE|PROFILE:N,...",
        help="engine model/GPU profile for every engine (default llama-3.1-8b-h100), or a mix such as "
        "llama-3.1-8b-h100:4,llama-3.2-1b-h100:4 (counts sum to --engines; no policy is told which engine "
        f"runs which). Known: {', '.join(PROFILES)}",
    )
    parser.add_argument(
        "--num-gpu-blocks", type=_positive_int, default=None,
        help="KV blocks per engine (default: derived from the profile's memory)",
    )
    parser.add_argument(
        "--rate-scale", type=_rates, default=[1.0], metavar="X[,Y...]",
        help="multiply the trace's arrival rate (2 = twice as fast); several give one run each",
    )
    parser.add_argument("--max-requests", type=_positive_int, default=None, help="replay only the first N requests")
    parser.add_argument("--out", type=Path, default=None, help="write summary.json and plots here")
    parser.add_argument("--json", action="store_true", help="print the summary JSON on stdout (table goes to stderr)")
    parser.add_argument("--find-knee", metavar="POLICY", help="find the rate where POLICY's TTFT p90 doubles")
    parser.add_argument(
        "--replicas", type=int, default=1,
        help="picker replicas taking requests in turn, each with its own learned state (offline only; default 1)",
    )
    parser.add_argument(
        "--shared-prefix-view", action="store_true",
        help="replicas share one learned prefix index (what redisUrl converges to); needs --replicas ≥ 2",
    )
    parser.add_argument(
        "--shared-state", action="store_true",
        help="replicas share what epp serve --shared-state-url shares: the prefix view, the TTFT in-flight "
             "ledger and learned latency, exchanged every --shared-state-period of virtual time; needs --replicas ≥ 2",
    )
    parser.add_argument(
        "--shared-state-period", type=duration, default=DEFAULT_PERIOD, metavar="DURATION",
        help=f"how often replicas exchange shared state (default {DEFAULT_PERIOD * 1000:g}ms, as epp serve): "
             "each sees the others' state one to two periods old",
    )
    parser.add_argument("--live", action="store_true", help="replay through real Envoy + epp serve + epp sim processes")
    parser.add_argument(
        "--time-scale", type=float, default=1.0,
        help="live only: wall seconds per simulated second (0.5 = twice as fast; default 1)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed for engines and synthetic workloads")
    parser.add_argument(
        "--jobs", type=_positive_int, default=min(2, os.cpu_count() or 1), help="runs in parallel (processes)"
    )
    parser.add_argument("--synthetic", choices=sorted(WORKLOADS), help="generate the workload instead of reading TRACE")
    for name, workload in WORKLOADS.items():
        group = parser.add_argument_group(f"--synthetic {name}")
        for f in dataclasses.fields(workload.params):
            flag = f"--{workload.flag_prefix}-{f.name.replace('_', '-')}"
            group.add_argument(
                flag, dest=f"{workload.flag_prefix}_{f.name}", type=type(f.default), default=f.default,
                help=f"{f.metadata['help']} (default {f.default})",
            )
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from epp.replay.app import ReplayError, replay

    try:
        return replay(args)
    except ReplayError as exc:
        print(f"epp replay: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # worker processes ignore SIGINT and are killed by the runner on the way out
        print("epp replay: interrupted", file=sys.stderr)
        return 130
