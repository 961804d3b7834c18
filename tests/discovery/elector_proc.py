"""A second ``epp``-side replica for the two-process leader-election test.

Built from the same flags and configuration ``epp serve`` uses (``ServeConfig`` + ``build_runtime``); prints
``ready=<bool> leader=<bool>`` whenever that changes, and on SIGTERM leaves the runtime (which
releases the Lease) before exiting — what a pod does on a rolling update.
"""

from __future__ import annotations
from epp.cli import build_parser

import asyncio
import signal
import sys

from epp.datastore import Datastore
from epp.discovery.kube_setup import build_runtime
from epp.serve_config import ServeConfig


async def main(argv: list[str]) -> int:
    config = ServeConfig.from_args(build_parser().parse_args(["serve", *argv]))
    runtime = build_runtime(config.discovery.kubernetes, Datastore())
    assert runtime is not None
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    async with runtime:
        shown = None
        while not stop.is_set():
            state = (runtime.ready, runtime.is_leader)
            if state != shown:
                print(f"ready={state[0]} leader={state[1]}", flush=True)
                shown = state
            try:
                await asyncio.wait_for(stop.wait(), 0.05)
            except TimeoutError:
                pass
    print("released", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main(sys.argv[1:])))
