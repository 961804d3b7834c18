"""``epp demo``: a real Envoy + ``epp serve`` + local engines on this machine, some traffic, and a table.

Everything runs on 127.0.0.1 on free ports, from this process, and is stopped before the command returns
(also on Ctrl-C, which exits 130 after removing the work directory).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

DEFAULT_POLICY = "default"
"""``epp serve``'s own default: it sends the requests that share a system prompt to the engine that
already cached it, so the demo's "cached tokens" column shows prefix routing at work."""


def _engines(text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 8:
        raise argparse.ArgumentTypeError(f"must be a number from 1 to 8, got {text!r}")
    return int(text)


def _pickers(text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 4:
        raise argparse.ArgumentTypeError(f"must be a number from 1 to 4, got {text!r}")
    return int(text)


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--engines", type=_engines, default=3, help="number of local engines (1-8)")
    parser.add_argument("--policy", default=DEFAULT_POLICY, metavar="PRESET|CONFIG.yaml",
                        help="routing policy epp serve runs: a preset (default, gie-default, least-inflight, "
                             "random, ...) or an EndpointPickerConfig file")
    parser.add_argument("--pickers", type=_pickers, default=1,
                        help="epp serve replicas (1-4) in one gRPC-health-checked ext_proc cluster")
    parser.add_argument("--tls", action="store_true", help="run epp with TLS (self-signed), as in production")
    parser.add_argument("--keep-dir", action="store_true", help="keep the work directory (configs, logs)")
    parser.set_defaults(run=run)


def policy_argument(spec: str) -> str:
    """``spec`` checked now (a typo fails before anything starts); a file becomes an absolute path."""
    from epp.config import ConfigError, load_config
    from epp.config.presets import PRESETS

    try:
        load_config(spec)
    except ConfigError as exc:
        raise ValueError(f"--policy {spec}: {exc}") from None
    return spec if spec in PRESETS else str(Path(spec).resolve())


def run(args: argparse.Namespace) -> int:
    from epp.demo.main import run_demo

    try:
        policy = policy_argument(args.policy)
    except ValueError as exc:
        print(f"epp demo: {exc}", file=sys.stderr)
        return 2
    try:
        return run_demo(args.engines, policy=policy, tls=args.tls, keep_dir=args.keep_dir, pickers=args.pickers)
    except KeyboardInterrupt:
        print("epp demo: interrupted; stopped Envoy, epp and the engines", file=sys.stderr)
        return 130
    except (RuntimeError, OSError) as exc:  # an engine, epp or Envoy that would not start
        print(f"epp demo: {exc}", file=sys.stderr)
        return 1
