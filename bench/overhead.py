"""What epp adds to a request: Envoy → engine directly vs Envoy → epp → engine, in one run.

Three Envoys share one set of echo engines (one child process) and one ``epp serve``:
  direct    no ext_proc; the client names the engine in ``x-gateway-destination-endpoint`` (same cluster,
            same route as the others, so the difference is the picker alone);
  duplex    the GIE reference processing mode (request + response bodies FULL_DUPLEX_STREAMED);
  buffered  request body BUFFERED, response headers only;
  duplex-req  request body FULL_DUPLEX_STREAMED, no response phase (what the response phase costs; epp
            then sees no usage).
For 1 KB and 220 KB chat bodies at concurrency 1 and 16 it sends a bounded number of requests and prints
latency p50/p99, the latency epp adds over ``direct`` (same size and concurrency), requests/s, and
requests per CPU-second of the epp process (utime+stime from /proc/PID/stat before and after each run).

    python bench/overhead.py                     # full matrix (~2 min on 2 cores)
    python bench/overhead.py --requests 200 --sizes 1024 --concurrency 1
Results are meaningful only side by side from one run: the machine is shared and noisy.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import orjson

from epp._util.proc import cpu_seconds
from epp.demo.engines import start_echo_engines
from epp.envoy.config import DESTINATION_HEADER, BodyMode, Upstream
from epp.envoy.picker import PickerProcess
from epp.envoy.process import EnvoyProcess
from epp.envoy.stack import local_config

MODES: dict[str, dict[str, object]] = {
    "direct": {"strip_client_destination": False},
    "duplex": {},
    "buffered": {
        "request_body_mode": BodyMode.BUFFERED,
        "response_headers": True,
        "response_body_mode": BodyMode.NONE,
    },
    "duplex-req": {"response_headers": False, "response_body_mode": BodyMode.NONE},
}


@dataclass
class Run:
    mode: str
    size: int
    concurrency: int
    latencies_ms: list[float]
    elapsed_s: float
    epp_cpu_s: float
    errors: int

    def pct(self, q: float) -> float:
        ordered = sorted(self.latencies_ms)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]

    @property
    def rps(self) -> float:
        return len(self.latencies_ms) / self.elapsed_s

    @property
    def per_cpu_s(self) -> float | None:
        return len(self.latencies_ms) / self.epp_cpu_s if self.epp_cpu_s > 0 else None


def chat_body(size: int) -> bytes:
    """An OpenAI chat request of about ``size`` bytes (the padding is in the user message)."""
    base = {"model": "demo-model", "max_tokens": 4, "messages": [{"role": "user", "content": ""}]}
    pad = max(0, size - len(orjson.dumps(base)))
    base["messages"][0]["content"] = "lorem ipsum " * (pad // 12) + "x" * (pad % 12)  # type: ignore[index]
    return orjson.dumps(base)


async def load(url: str, body: bytes, concurrency: int, total: int, headers: dict[str, str]) -> tuple[list[float], float, int]:
    """``total`` POSTs from ``concurrency`` keep-alive workers; returns latencies (ms), elapsed s, errors."""
    latencies: list[float] = []
    errors = 0
    remaining = total
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def worker() -> None:
            nonlocal remaining, errors
            while remaining > 0:
                remaining -= 1
                t0 = time.perf_counter()
                async with session.post(url, data=body, headers=headers) as reply:
                    await reply.read()
                    ok = reply.status == 200
                if ok:
                    latencies.append((time.perf_counter() - t0) * 1000)
                else:
                    errors += 1

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return latencies, time.perf_counter() - start, errors


async def measure(envoys: dict[str, EnvoyProcess], picker: PickerProcess, engine: Upstream, args: argparse.Namespace) -> list[Run]:
    runs: list[Run] = []
    for size in args.sizes:
        body = chat_body(size)
        for concurrency in args.concurrency:
            total = args.requests if concurrency == 1 else args.requests * 4
            for mode, envoy in envoys.items():
                url = envoy.url + "/v1/chat/completions"
                headers = {"content-type": "application/json"}
                if mode == "direct":
                    headers[DESTINATION_HEADER] = engine.hostport
                await load(url, body, concurrency, args.warmup, headers)
                cpu0 = cpu_seconds(picker.pid)
                latencies, elapsed, errors = await load(url, body, concurrency, total, headers)
                runs.append(Run(mode, size, concurrency, latencies, elapsed, cpu_seconds(picker.pid) - cpu0, errors))
                print(f"  done {mode:8} {size:>7} B c={concurrency:<2} {len(latencies)} ok, {errors} errors", file=sys.stderr)
    return runs


def report(runs: list[Run]) -> str:
    base = {(r.size, r.concurrency): r for r in runs if r.mode == "direct"}
    head = f"| mode | body | c | p50 ms | p99 ms | added p50 ms | added p99 ms | req/s | req per epp CPU-s | errors |"
    lines = [head, "|---|---|---|---|---|---|---|---|---|---|"]
    for r in runs:
        ref = base.get((r.size, r.concurrency))
        added = "–" if r.mode == "direct" or ref is None else f"{r.pct(0.5) - ref.pct(0.5):+.2f}"
        added99 = "–" if r.mode == "direct" or ref is None else f"{r.pct(0.99) - ref.pct(0.99):+.2f}"
        per_cpu = "–" if r.mode == "direct" or r.per_cpu_s is None else f"{r.per_cpu_s:,.0f}"
        size = f"{r.size // 1024} KB"
        lines.append(
            f"| {r.mode} | {size} | {r.concurrency} | {r.pct(0.5):.2f} | {r.pct(0.99):.2f} | {added} | {added99} "
            f"| {r.rps:,.0f} | {per_cpu} | {r.errors} |"
        )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=500, help="requests per run at c=1 (×4 at higher c)")
    parser.add_argument("--warmup", type=int, default=50)
    parser.add_argument("--sizes", type=int, nargs="+", default=[1024, 220 * 1024])
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--modes", nargs="+", choices=list(MODES), default=list(MODES))
    parser.add_argument("--picker-arg", action="append", default=[], help="extra flag for epp serve (repeat)")
    args = parser.parse_args()
    if "direct" not in args.modes:
        args.modes.insert(0, "direct")
    fleet = start_echo_engines(["engine"])
    engine = fleet.upstreams[0]
    envoys: dict[str, EnvoyProcess] = {}
    with tempfile.TemporaryDirectory(prefix="epp-bench-") as tmp:
        workdir = Path(tmp)
        picker = PickerProcess([engine], extra_args=args.picker_arg, log_path=workdir / "epp.log")
        try:
            picker.start()
            for mode in args.modes:
                options = MODES[mode]
                target = None if mode == "direct" else picker.address
                config = local_config(target, [engine], workdir / mode, **options)  # type: ignore[arg-type]
                envoys[mode] = EnvoyProcess(config, workdir / mode, log_level="error")
                envoys[mode].start()
            runs = asyncio.run(measure(envoys, picker, engine, args))
        finally:
            for envoy in envoys.values():
                envoy.stop()
            picker.stop()
            fleet.stop()
    print(report(runs))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
