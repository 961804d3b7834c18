"""Soak epp: N minutes of mixed traffic through real Envoys → ``epp serve`` → ``epp sim`` engines, with faults.

Faults on a fixed schedule (fractions of the run): epp SIGTERM (graceful drain) and SIGKILL restarts, an
engine killed and restarted (twice), an engine's /metrics answering garbage, then hanging, an engine slowed
10x, and the endpoints file changing membership. Prints the report (markdown) and writes it as JSON.
Everything runs on 127.0.0.1, at a bounded rate, and is stopped by PID when the run ends.

    python bench/soak.py                 # 10 minutes
    python bench/soak.py --minutes 2 --rate 8
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
    args = parser.parse_args()
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


if __name__ == "__main__":
    sys.exit(main())
