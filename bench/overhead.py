"""What epp adds to a request: Envoy → engine directly vs Envoy → picker → engine, in one run.

Every picker (``--pickers``) gets one Envoy per mode; all share one set of echo engines (one child process):
  direct    no ext_proc; the client names the engine in ``x-gateway-destination-endpoint`` (same cluster,
            same route as the others, so the difference is the picker alone);
  duplex    the GIE reference processing mode (request + response bodies FULL_DUPLEX_STREAMED);
  buffered  request body BUFFERED, response headers only;
  duplex-req  request body FULL_DUPLEX_STREAMED, no response phase (what the response phase costs; epp
            then sees no usage).
Pickers: ``epp`` (this tree's ``epp serve``, default config; ``--picker-arg`` adds flags), ``NAME=PATH``
(``epp serve`` from another source tree, e.g. ``git archive main | tar -x -C /tmp/before``, so before/after
land in one run), ``epp-null`` (``bench/epp_null_handler.py``: this tree's ``epp serve`` with minimal's
handler: epp's way of driving grpc.aio without its pick), ``minimal`` / ``minimal-iterator``
(``bench/minimal_extproc.py``: the least a grpc.aio picker can do, with context.read()/write() or an async
iterator + yield; the floor epp is measured against), ``minimal+MS`` (minimal spending MS ms of CPU per
request in its handler: what a pick of that cost adds on grpc.aio).
For 1 KB and 220 KB chat bodies at concurrency 1 and 16 it sends a bounded number of requests and prints
latency p50/p99, the latency the picker adds over ``direct`` (same size and concurrency), requests/s, and
requests per CPU-second of the picker process (its kernel CPU clock before and after each run), and
the picker's wakeups per request (voluntary context switches of all its threads): on grpc.aio each message
wakes an I/O thread, the completion-queue thread and the event loop in turn, which is most of what a request
costs at c=1.
Configurations take turns within each size × concurrency cell, so slow drifts in machine load hit all alike.
``--prompts unique`` gives every request a prompt never sent before (the default ``same`` resends one body,
whose prompt the picker hashes once and then finds in its memo and prefix index: a 220 KB novel prompt
costs epp several times a resent one's CPU).

    python bench/overhead.py                     # epp, full matrix (~2 min on 2 cores)
    python bench/overhead.py --pickers before=/tmp/before epp minimal --modes duplex --rounds 3
    python bench/overhead.py --requests 200 --sizes 1024 --concurrency 1
    python bench/overhead.py --pickers epp minimal --modes duplex --sizes 225280 --prompts same unique
    python bench/overhead.py --pickers epp native=. --args native "--grpc-server native"   # two transports
    python bench/overhead.py --workers 1 2 --modes duplex          # epp serve --workers 2 (epp-w2) vs one
With ``--workers`` each epp picker runs once per worker count (``NAME-wN`` for N > 1); its CPU is the parent's
plus its workers'. Every Envoy runs ``--envoy-concurrency`` threads (default 1, or 4 × max(--workers)): each
thread opens its own connection to the picker, and the kernel spreads connections (not streams) over the
workers by a hash, so a few connections can land on one worker.
Results are meaningful only side by side from one run: the machine is shared and noisy.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shlex
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import aiohttp
import orjson

from epp._util import proc as proc_util
from epp.demo.engines import start_echo_engines
from epp.envoy.config import DESTINATION_HEADER, BodyMode, Upstream
from epp.envoy.picker import PickerProcess
from epp.envoy.process import EnvoyProcess
from epp.envoy.stack import local_config

MINIMAL = Path(__file__).with_name("minimal_extproc.py")
NULL_HANDLER = Path(__file__).with_name("epp_null_handler.py")
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


class Picker(Protocol):
    @property
    def address(self) -> Upstream: ...
    @property
    def pid(self) -> int: ...
    def start(self, timeout: float = ...) -> None: ...
    def stop(self) -> object: ...


class NullHandlerPicker(PickerProcess):
    """``epp serve`` with minimal's handler (``bench/epp_null_handler.py``): epp's transport, no pick."""

    def command(self) -> list[str]:
        epp_serve = super().command()
        assert epp_serve[1:3] == ["-m", "epp"]
        return [epp_serve[0], str(NULL_HANDLER), *epp_serve[3:]]


class MinimalPicker:
    """``bench/minimal_extproc.py`` as a child process, ready when it prints its ready line."""

    def __init__(self, engine: Upstream, api: str, burn_ms: str = "0") -> None:
        self.engine = engine
        self.api = api
        self.burn_ms = burn_ms
        self.address = Upstream("127.0.0.1", proc_util.free_port())
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self._proc is not None
        return self._proc.pid

    def start(self, timeout: float = 30.0) -> None:
        self._proc = subprocess.Popen(
            [sys.executable, str(MINIMAL), "--port", str(self.address.port), "--destination", self.engine.hostport,
             "--api", self.api, "--burn-ms", self.burn_ms],
            stdout=subprocess.PIPE,
        )
        proc_util.read_line(self._proc, timeout=timeout)

    def stop(self) -> object:
        proc, self._proc = self._proc, None
        return None if proc is None else proc_util.stop(proc)


def make_picker(spec: str, engine: Upstream, picker_args: list[str], workdir: Path, name: str) -> Picker:
    """``epp``, ``epp-null``, ``minimal``, ``minimal-iterator`` or ``NAME=PATH`` (epp serve from the source tree at PATH)."""
    if spec == "minimal":
        return MinimalPicker(engine, "read-write")
    if spec == "minimal-iterator":
        return MinimalPicker(engine, "iterator")
    if spec.startswith("minimal+"):  # minimal+0.3: minimal with a 0.3 ms stand-in pick (--burn-ms)
        burn = spec.partition("+")[2]
        try:
            float(burn)
        except ValueError:
            raise SystemExit(f"--pickers {spec!r}: expected minimal+MS with MS a number of milliseconds") from None
        return MinimalPicker(engine, "read-write", burn)
    if spec == "epp-null":
        return NullHandlerPicker([engine], extra_args=picker_args, log_path=workdir / f"{name}.log")
    if spec == "epp":
        return PickerProcess([engine], extra_args=picker_args, log_path=workdir / f"{name}.log")
    _, sep, tree = spec.partition("=")
    if not sep or not (Path(tree) / "epp" / "__init__.py").is_file():
        raise SystemExit(f"--pickers {spec!r}: expected epp, epp-null, minimal, minimal-iterator or NAME=PATH to an epp source tree")
    env = os.environ | {"PYTHONPATH": str(Path(tree).resolve())}
    return PickerProcess([engine], extra_args=picker_args, log_path=workdir / f"{name}.log", cwd=Path(tree), env=env)


def worker_variants(spec: str, workers: list[int]) -> list[tuple[str, list[str]]]:
    """(name, extra flags) per ``--workers`` count for an epp picker; the minimal pickers run once."""
    if spec.startswith("minimal"):
        return [(spec, [])]
    name = picker_name(spec)
    return [(name if n == 1 else f"{name}-w{n}", [] if n == 1 else ["--workers", str(n)]) for n in workers]


def picker_name(spec: str) -> str:
    return spec.partition("=")[0]


@dataclass
class Run:
    picker: str
    mode: str
    size: int
    concurrency: int
    prompts: str = "same"
    latencies_ms: list[float] = field(default_factory=list)
    elapsed_s: float = 0.0
    picker_cpu_s: float = 0.0
    picker_switches: int = 0
    rest_cpu_s: float = 0.0
    errors: int = 0

    def pct(self, q: float) -> float:
        ordered = sorted(self.latencies_ms)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]

    @property
    def rps(self) -> float:
        return len(self.latencies_ms) / self.elapsed_s

    @property
    def switches_per_request(self) -> float | None:
        return self.picker_switches / len(self.latencies_ms) if self.latencies_ms else None

    @property
    def per_cpu_s(self) -> float | None:
        return len(self.latencies_ms) / self.picker_cpu_s if self.picker_cpu_s > 0 else None

    @property
    def rest_ms_per_request(self) -> float | None:
        """CPU ms per request of everything on the path but the picker: Envoy, the echo engine, this client."""
        return 1000 * self.rest_cpu_s / len(self.latencies_ms) if self.latencies_ms else None


def chat_body(size: int) -> bytes:
    """An OpenAI chat request of about ``size`` bytes (the padding is in the user message)."""
    base = {"model": "demo-model", "max_tokens": 4, "messages": [{"role": "user", "content": ""}]}
    pad = max(0, size - len(orjson.dumps(base)))
    base["messages"][0]["content"] = "lorem ipsum " * (pad // 12) + "x" * (pad % 12)  # type: ignore[index]
    return orjson.dumps(base)


class Bodies:
    """The request bodies of one size: ``same`` resends one body (every prompt block is in the picker's
    hash memo and prefix index after the first request), ``unique`` starts each prompt with a number never
    sent before (each is hashed and indexed in full, as a novel prompt is)."""

    def __init__(self, size: int, prompts: str) -> None:
        self.body = chat_body(size)
        self.unique = prompts == "unique"
        head, sep, rest = self.body.partition(b'"content":"')
        self._head, self._rest = head + sep, rest
        self._sent = 0

    def next(self) -> bytes:
        if not self.unique:
            return self.body
        self._sent += 1
        return b"%s%d %s" % (self._head, self._sent, self._rest)


async def load(url: str, bodies: Bodies, concurrency: int, total: int, headers: dict[str, str]) -> tuple[list[float], float, int]:
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
                async with session.post(url, data=bodies.next(), headers=headers) as reply:
                    await reply.read()
                    ok = reply.status == 200
                if ok:
                    latencies.append((time.perf_counter() - t0) * 1000)
                else:
                    errors += 1

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return latencies, time.perf_counter() - start, errors


Config = tuple[str, str]  # (picker name, mode); ("", "direct") is the baseline without a picker


async def measure(
    envoys: dict[Config, EnvoyProcess], pickers: dict[str, Picker], engine: Upstream, engine_pid: int,
    args: argparse.Namespace,
) -> list[Run]:
    runs: list[Run] = []
    for prompts, size in ((p, s) for p in args.prompts for s in args.sizes):
        bodies = Bodies(size, prompts)
        for concurrency in args.concurrency:
            total = args.requests if concurrency == 1 else args.requests * 4
            cell = {config: Run(config[0], config[1], size, concurrency, prompts) for config in envoys}
            for _ in range(args.rounds):
                for (name, mode), envoy in envoys.items():
                    url = envoy.url + "/v1/chat/completions"
                    headers = {"content-type": "application/json"}
                    if mode == "direct":
                        headers[DESTINATION_HEADER] = engine.hostport
                    await load(url, bodies, concurrency, args.warmup, headers)
                    pid = pickers[name].pid if name else None
                    cpu0 = tree_cpu(pid) if pid else 0.0
                    switches0 = context_switches(pid) if pid else 0
                    rest0 = rest_cpu(envoy.pid, engine_pid)
                    latencies, elapsed, errors = await load(url, bodies, concurrency, total // args.rounds, headers)
                    run = cell[(name, mode)]
                    run.latencies_ms += latencies
                    run.elapsed_s += elapsed
                    run.picker_cpu_s += tree_cpu(pid) - cpu0 if pid else 0.0
                    run.picker_switches += context_switches(pid) - switches0 if pid else 0
                    run.rest_cpu_s += rest_cpu(envoy.pid, engine_pid) - rest0
                    run.errors += errors
            runs.extend(cell.values())
            print(f"  done {prompts} {size:>7} B c={concurrency}", file=sys.stderr)
    return runs


def tree_cpu(pid: int) -> float:
    """CPU seconds of ``pid`` and its live children (``--workers``), in nanoseconds' resolution: the
    kernel's per-process CPU clock (``clock_getcpuclockid``), not ``/proc/PID/stat``'s 10 ms ticks, which
    over a run of 200 requests at c=1 (~0.3 s of CPU) quantize the result by ~3 %."""
    total = 0.0
    for each in [pid, *_children(pid)]:
        try:
            total += time.clock_gettime(((~each) << 3) | 2)  # Linux MAKE_PROCESS_CPUCLOCK(pid, CPUCLOCK_SCHED)
        except OSError:
            if each == pid:
                return proc_util.tree_cpu_seconds(pid)
    return total


def rest_cpu(envoy_pid: int, engine_pid: int) -> float:
    """CPU seconds so far of the rest of the request's path: Envoy, the echo engine and this load generator."""
    return tree_cpu(envoy_pid) + tree_cpu(engine_pid) + time.process_time()


def context_switches(pid: int) -> int:
    """Voluntary context switches of every thread of ``pid`` and of its children so far: each is a thread
    going to sleep and being woken again, which is what a picker pays per message on grpc.aio (its I/O
    threads hand every completion to the event loop). Involuntary ones (preemption) are left out: they
    follow the machine's load, not the picker."""
    total = 0
    for status in [task for each in [pid, *_children(pid)] for task in Path(f"/proc/{each}/task").glob("*/status")]:
        try:
            for line in status.read_text().splitlines():
                if line.startswith("voluntary_ctxt_switches"):
                    total += int(line.split()[1])
        except OSError:
            continue  # a thread or child gone while we looked
    return total


def _children(pid: int) -> list[int]:
    """Live child processes of ``pid`` (``epp serve --workers N``)."""
    out: list[int] = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == pid:
                out.append(int(stat.parent.name))
        except (OSError, IndexError, ValueError):
            continue
    return out


def report(runs: list[Run]) -> str:
    base = {(r.prompts, r.size, r.concurrency): r for r in runs if r.mode == "direct"}
    head = "| picker | mode | prompts | body | c | p50 ms | p99 ms | added p50 ms | added p99 ms | req/s | req per picker CPU-s | picker wakeups per req | errors |"
    lines = [head, "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in runs:
        ref = base.get((r.prompts, r.size, r.concurrency))
        added = "–" if r.mode == "direct" or ref is None else f"{r.pct(0.5) - ref.pct(0.5):+.2f}"
        added99 = "–" if r.mode == "direct" or ref is None else f"{r.pct(0.99) - ref.pct(0.99):+.2f}"
        per_cpu = "–" if r.mode == "direct" or r.per_cpu_s is None else f"{r.per_cpu_s:,.0f}"
        switches = "–" if r.mode == "direct" or r.switches_per_request is None else f"{r.switches_per_request:.1f}"
        size = f"{r.size // 1024} KB"
        lines.append(
            f"| {r.picker or '–'} | {r.mode} | {r.prompts} | {size} | {r.concurrency} | {r.pct(0.5):.2f} | {r.pct(0.99):.2f} "
            f"| {added} | {added99} | {r.rps:,.0f} | {per_cpu} | {switches} | {r.errors} |"
        )
    return "\n".join(lines)


def scaling(runs: list[Run], cores: int) -> str:
    """``--workers``: each wN run's req/s ÷ its w1 run's, beside the most any N workers could give on this
    machine. With the picker's CPU per request p and the rest of the path's o (from the w1 run), one worker
    serves at most min(1/p, C/(p+o)) requests per second on C cores and N workers min(N/p, C/(p+o)): when
    Envoy, the engine and the client cost about what the picker does, no picker can scale by N here. The
    last column is the cores at which N workers could scale fully, N·(p+o)/p."""
    ones = {(r.picker, r.mode, r.prompts, r.size, r.concurrency): r for r in runs}
    lines = [f"Scaling with workers ({cores} cores): measured ÷ one worker, and the most this machine allows",
             "| picker | body | c | picker CPU ms/req | rest of path CPU ms/req | req/s ÷ 1 worker | bound on this machine | cores for N× |",
             "|---|---|---|---|---|---|---|---|"]
    for r in runs:
        base, _, count = r.picker.rpartition("-w")
        one = ones.get((base, r.mode, r.prompts, r.size, r.concurrency)) if base and count.isdigit() else None
        if one is None or one.per_cpu_s is None or one.rest_ms_per_request is None:
            continue
        p, o = 1 / one.per_cpu_s, one.rest_ms_per_request / 1000
        bound = min(int(count) / p, cores / (p + o)) / min(1 / p, cores / (p + o))
        lines.append(f"| {r.picker} | {r.size // 1024} KB | {r.concurrency} | {1000 * p:.2f} | {1000 * o:.2f} "
                     f"| {r.rps / one.rps:.2f}× | {bound:.2f}× | {int(count) * (p + o) / p:.1f} |")
    return "\n".join(lines) if len(lines) > 3 else ""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=500, help="requests per configuration at c=1 (×4 at higher c)")
    parser.add_argument("--warmup", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=1, help="split each run into this many interleaved turns")
    parser.add_argument("--sizes", type=int, nargs="+", default=[1024, 220 * 1024])
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--prompts", nargs="+", choices=["same", "unique"], default=["same"],
                        help="same: one body resent (its prompt hashed once, then memoized); unique: every "
                             "request's prompt starts with its own number (hashed and indexed in full)")
    parser.add_argument("--modes", nargs="+", choices=[m for m in MODES if m != "direct"], default=list(MODES)[1:])
    parser.add_argument("--pickers", nargs="+", default=["epp"],
                        help="epp | epp-null | minimal | minimal-iterator | minimal+MS | NAME=PATH (epp serve from another source tree)")
    parser.add_argument("--workers", type=int, nargs="+", default=[1],
                        help="epp serve --workers counts, each epp picker run once per count (NAME-wN), side by side")
    parser.add_argument("--picker-arg", action="append", default=[], help="extra flag for every epp serve (repeat)")
    parser.add_argument("--args", nargs=2, action="append", default=[], metavar=("NAME", "FLAGS"),
                        help="extra flags (one shell-quoted string) for the picker NAME only (repeat)")
    parser.add_argument("--envoy-concurrency", type=int, default=0,
                        help="Envoy worker threads (connections to each picker); 0 = 1, or 4 x max(--workers)")
    args = parser.parse_args()
    envoy_threads = args.envoy_concurrency or (1 if max(args.workers) == 1 else 4 * max(args.workers))
    fleet = start_echo_engines(["engine"])
    engine = fleet.upstreams[0]
    pickers: dict[str, Picker] = {}
    envoys: dict[Config, EnvoyProcess] = {}
    with tempfile.TemporaryDirectory(prefix="epp-bench-") as tmp:
        workdir = Path(tmp)
        try:
            configs: list[tuple[Config, Upstream | None]] = [(("", "direct"), None)]
            own = {name: shlex.split(flags) for name, flags in args.args}
            if unknown := set(own) - {picker_name(spec) for spec in args.pickers}:
                raise SystemExit(f"--args names no picker in --pickers: {sorted(unknown)}")
            for spec in args.pickers:
                for name, workers in worker_variants(spec, args.workers):
                    flags = args.picker_arg + own.get(picker_name(spec), []) + workers
                    picker = make_picker(spec, engine, flags, workdir, name)
                    pickers[name] = picker
                    picker.start(timeout=120.0)  # workers start side by side on a busy machine
                    configs += [((name, mode), picker.address) for mode in args.modes]
            for (name, mode), target in configs:
                where = workdir / f"{name or 'none'}-{mode}"
                config = local_config(target, [engine], where, **MODES[mode])  # type: ignore[arg-type]
                envoys[(name, mode)] = EnvoyProcess(config, where, log_level="error", concurrency=envoy_threads)
                envoys[(name, mode)].start()
            runs = asyncio.run(measure(envoys, pickers, engine, fleet.processes[0].pid, args))
        finally:
            for envoy in envoys.values():
                envoy.stop()
            for picker in pickers.values():
                picker.stop()
            fleet.stop()
    print(report(runs))
    if table := scaling(runs, len(os.sched_getaffinity(0))):
        print("\n" + table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
