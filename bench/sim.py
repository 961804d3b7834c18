"""Speed of the simulator: HTTP requests/s of one ``epp sim`` process, and the virtual-time core's
simulated requests per wall second on an 8-engine replay of a one-hour trace.

    python bench/sim.py [--requests 20000] [--concurrency 64] [--trace PATH]

HTTP: a ``--time-scale 0`` sim (engine time costs no wall time) pinned to one core when the OS
allows it, hit by an aiohttp client in this process with tiny prompts and ``max_tokens`` 1; reports
wall requests/s and requests per second of the server's own CPU time. Virtual time: the Azure 2023
conversation trace (58 min, 19,366 requests) round-robined onto 8 engines, each run by
``epp.engine.driver.run_virtual``; reports wall time with and without decode fusing.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import datetime
import os
import random
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
import orjson
from fetch_traces import TRACES_DIR, require  # bench/ is on sys.path when run as a script

from epp.engine.config import EngineConfig
from epp.engine.core import EngineCore
from epp.engine.driver import run_virtual
from epp.engine.request import EngineRequest

TRACE = TRACES_DIR / "azure_llm_2023_conv.csv"  # python bench/fetch_traces.py


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def _http(requests: int, concurrency: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        log = Path(tmp) / "sim.log"
        cmd = [sys.executable, "-m", "epp", "sim", "--port", "0", "--time-scale", "0"]
        if sys.platform == "linux":
            cmd = ["taskset", "-c", "0", *cmd]
        with log.open("wb") as sink:
            proc = subprocess.Popen(cmd, stdout=sink, stderr=subprocess.STDOUT)
        try:
            while not (m := re.search(rb"127\.0\.0\.1:(\d+)", log.read_bytes())):
                if proc.poll() is not None:
                    raise SystemExit(log.read_text())
                await asyncio.sleep(0.05)
            url = f"http://127.0.0.1:{int(m.group(1))}/v1/completions"
            bodies = [orjson.dumps({"model": "meta-llama/Llama-3.1-8B-Instruct", "prompt": f"hi {i}", "max_tokens": 1})
                      for i in range(requests)]  # fmt: skip
            connector = aiohttp.TCPConnector(limit=concurrency)
            async with aiohttp.ClientSession(connector=connector) as s:

                async def worker(chunk: list[bytes]) -> None:
                    for body in chunk:
                        async with s.post(url, data=body) as resp:
                            await resp.read()
                            assert resp.status == 200

                await worker(bodies[:100])  # warm up
                cpu0, t0 = _cpu_seconds(proc.pid), time.perf_counter()
                await asyncio.gather(*(worker(bodies[100 + i :: concurrency]) for i in range(concurrency)))
                wall, cpu = time.perf_counter() - t0, _cpu_seconds(proc.pid) - cpu0
            n = requests - 100
            print(f"http: {n} requests, concurrency {concurrency}: {n / wall:,.0f} req/s wall, "
                  f"{n / cpu:,.0f} req/s per server CPU-second (server CPU {cpu:.1f}s over {wall:.1f}s)")  # fmt: skip
        finally:
            proc.terminate()
            proc.wait()


def _trace_requests(path: Path, engines: int) -> tuple[list[list[EngineRequest]], float]:
    rng = random.Random(0)
    per_engine: list[list[EngineRequest]] = [[] for _ in range(engines)]
    t0 = None
    last = 0.0
    with path.open() as f:
        for i, row in enumerate(csv.DictReader(f)):
            ts = datetime.datetime.fromisoformat(row["TIMESTAMP"][:26]).timestamp()
            t0 = ts if t0 is None else t0
            last = ts - t0
            n, m = max(1, int(row["ContextTokens"])), max(1, int(row["GeneratedTokens"]))
            prompt = [rng.randrange(1 << 32) for _ in range(8)] + list(range(n - 8))
            per_engine[i % engines].append(EngineRequest(f"r{i}", prompt[:n], m, last))
    return per_engine, last


def _virtual(trace: Path, engines: int) -> None:
    for fuse in (True, False):
        per_engine, span = _trace_requests(trace, engines)
        total = sum(map(len, per_engine))
        t0 = time.perf_counter()
        done = sum(len(run_virtual(EngineCore(EngineConfig()), reqs, fuse=fuse)) for reqs in per_engine)
        wall = time.perf_counter() - t0
        assert done == total
        print(f"virtual ({'fused' if fuse else 'single steps'}): {engines} engines, {total} requests over "
              f"{span / 60:.0f} simulated min in {wall:.1f} s wall = {total / wall:,.0f} simulated req/s, "
              f"one trace-hour in {wall * 3600 / span:.1f} s")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=20000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--engines", type=int, default=8)
    parser.add_argument("--trace", type=Path, default=TRACE)
    args = parser.parse_args()
    require(args.trace)  # before the HTTP half, not minutes into the run
    asyncio.run(_http(args.requests, args.concurrency))
    _virtual(args.trace, args.engines)


if __name__ == "__main__":
    main()
