"""``epp demo``: a real Envoy + ``epp serve`` + local engines on this machine, some traffic, and a table.

Everything runs on 127.0.0.1 on free ports, from this process, and is stopped before the command returns.
"""

from __future__ import annotations

import argparse


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--engines", type=int, default=3, help="number of local engines (1-8)")
    parser.add_argument("--tls", action="store_true", help="run epp with TLS (self-signed), as in production")
    parser.add_argument("--keep-dir", action="store_true", help="keep the work directory (configs, logs)")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from epp.demo.main import run_demo

    if not 1 <= args.engines <= 8:
        raise SystemExit("--engines must be between 1 and 8")
    return run_demo(args.engines, tls=args.tls, keep_dir=args.keep_dir)
