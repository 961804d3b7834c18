"""The closed-loop engine-kill test (issue #16): does a dead engine lose its traffic, and is work lost?

Real Envoy → ``epp serve`` → ``engines`` ``epp sim`` processes on 127.0.0.1; ``clients`` clients each send
the next request as soon as the previous one is answered (a closed loop: a dead engine that fails fast
would otherwise *attract* traffic). At ``kill_at`` seconds one engine breaks for ``down_for`` seconds, then
recovers; the run ends at ``duration``. ``fault`` says how it breaks: ``kill`` (SIGKILL, then started
again), ``hang`` (SIGSTOP, then SIGCONT: neither requests nor ``/metrics`` answer, and the requests it
holds must finish once it resumes — their work is not lost), or ``slow`` (restarted 10x slower, then
back to normal speed). Two gateway set-ups:

* ``retries=False``: the GIE reference gateway (ORIGINAL_DST on the destination header) with *no* route
  retries — what epp alone achieves (passive health);
* ``retries=True``: the shipped retry policy (``epp.envoy.config``: override_host + route retries down
  epp's ``--fallback-endpoints`` list).

The report has one row per phase (before, engine down, after) and epp's RSS and open descriptors after
warm-up and at the end. Requests are non-streamed completions: a gateway can retry a request until its
response starts, never a stream cut mid-way, so streams would measure the kill, not the routing.
Everything is stopped by PID whatever happens.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import orjson
from prometheus_client.parser import text_string_to_metric_families

from epp.envoy.picker import PickerProcess
from epp.envoy.process import EnvoyProcess
from epp.envoy.stack import local_config, with_failover
from epp.soak.engines import MODEL, SimEngine, start_engines
from epp.soak.observe import open_fds, rss_bytes

PHASES = ("before", "down", "after")
FAULTS = ("kill", "hang", "slow")
FOOTPRINT_EVERY = 15.0
SLOW_FACTOR = 10


@dataclass(frozen=True)
class ClosedLoopConfig:
    duration: float = 150.0
    kill_at: float = 60.0
    down_for: float = 30.0
    clients: int = 6
    engines: int = 3
    policy: str | None = None  # --config-file preset; None: no config (epp's default)
    retries: bool = False
    time_scale: float = 0.1
    max_tokens: int = 16
    request_timeout: float = 60.0
    fault: str = "kill"
    picker_args: tuple[str, ...] = ()
    """More ``epp serve`` flags (e.g. ``--endpoint-health=false`` for an ablation)."""
    picker_tree: Path | None = None
    """Run the picker from another source tree (a baseline such as the main branch before this work)."""

    def __post_init__(self) -> None:
        if self.fault not in FAULTS:
            raise ValueError(f"fault must be one of {', '.join(FAULTS)}")
        if not 0 < self.kill_at < self.kill_at + self.down_for < self.duration:
            raise ValueError("need 0 < kill_at < kill_at + down_for < duration")
        if self.clients < 1 or self.engines < 2:
            raise ValueError("need at least one client and two engines")


@dataclass
class PhaseRow:
    phase: str
    sent: int = 0
    failed: int = 0
    causes: Counter[str] = field(default_factory=Counter)
    latencies: list[float] = field(default_factory=list)

    def latency(self, q: float) -> float:
        """Quantile ``q`` of the successful requests' latencies, in seconds (0 without any)."""
        if not self.latencies:
            return 0.0
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]

    @property
    def success(self) -> float:
        return 1.0 if self.sent == 0 else (self.sent - self.failed) / self.sent


@dataclass
class ClosedLoopReport:
    config: ClosedLoopConfig
    phases: list[PhaseRow]
    rss_start: int
    rss_end: int
    fds_start: int
    fds_end: int
    killed_at: float
    restarted_at: float
    victim_health: dict[str, float] = field(default_factory=dict)
    """The killed engine's ``epp_endpoint_health`` states and ``ejections_total`` at the end."""
    footprint: list[tuple[float, int, int]] = field(default_factory=list)
    """(seconds, epp RSS bytes, epp open descriptors) every ``FOOTPRINT_EVERY`` seconds."""

    @property
    def sent(self) -> int:
        return sum(p.sent for p in self.phases)

    @property
    def failed(self) -> int:
        return sum(p.failed for p in self.phases)

    @property
    def success(self) -> float:
        return 1.0 if self.sent == 0 else (self.sent - self.failed) / self.sent


async def _one(session: aiohttp.ClientSession, url: str, prompt: str, max_tokens: int) -> str | None:
    """One completion; None when it succeeded, else why not."""
    payload = {"model": MODEL, "prompt": prompt, "max_tokens": max_tokens, "stream": False}
    try:
        async with session.post(url + "/v1/completions", data=orjson.dumps(payload),
                                headers={"content-type": "application/json", "x-request-id": uuid.uuid4().hex}) as reply:
            data = await reply.read()
            if reply.status != 200:
                return f"http-{reply.status}"
        orjson.loads(data)["choices"]
    except TimeoutError:
        return "client-timeout"
    except aiohttp.ClientError as exc:
        return f"connection:{type(exc).__name__}"
    except (orjson.JSONDecodeError, KeyError, TypeError):
        return "bad-response-body"
    return None


class ClosedLoop:
    """Owns the processes of one run."""

    def __init__(self, config: ClosedLoopConfig, workdir: Path) -> None:
        self.config = config
        self.workdir = workdir
        self.engines: list[SimEngine] = []
        self.picker: PickerProcess | None = None
        self.envoy: EnvoyProcess | None = None

    async def start(self) -> None:
        cfg = self.config
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.engines = await asyncio.to_thread(start_engines, cfg.engines, self.workdir, cfg.time_scale)
        upstreams = [e.upstream for e in self.engines]
        args = ([] if cfg.policy is None else ["--config-file", cfg.policy]) + list(cfg.picker_args)
        options: dict[str, Any] = {"retries": 0}
        if cfg.retries:
            args, options = with_failover(args, options)
        tree = cfg.picker_tree
        env = None if tree is None else {**os.environ, "PYTHONPATH": str(tree)}
        self.picker = PickerProcess(upstreams, extra_args=args, log_path=self.workdir / "epp.log", cwd=tree, env=env)
        await asyncio.to_thread(self.picker.start)
        envoy_dir = self.workdir / "envoy"
        envoy_dir.mkdir(exist_ok=True)
        self.envoy = EnvoyProcess(local_config(self.picker.address, upstreams, envoy_dir, **options), envoy_dir)
        await self.envoy.astart()  # spawned on this (main) thread: Envoy dies with the thread that spawned it

    def stop(self) -> None:
        if self.envoy is not None:
            self.envoy.stop()
        if self.picker is not None:
            self.picker.stop()
        for engine in self.engines:
            engine.stop()

    async def run(self) -> ClosedLoopReport:
        cfg = self.config
        assert self.envoy is not None and self.picker is not None
        url, pid = self.envoy.url, self.picker.pid
        rows = {name: PhaseRow(name) for name in PHASES}
        victim = self.engines[0]
        marks = {"killed": cfg.kill_at, "restarted": cfg.kill_at + cfg.down_for}
        t0 = time.monotonic()

        def phase(at: float) -> PhaseRow:
            if at < marks["killed"]:
                return rows["before"]
            return rows["down"] if at < marks["restarted"] else rows["after"]

        async def client(i: int, session: aiohttp.ClientSession) -> None:
            n = 0
            while (start := time.monotonic() - t0) < cfg.duration:
                prompt = f"client {i} request {n} " + "lorem ipsum dolor " * (8 + n % 24)
                cause = await _one(session, url, prompt, cfg.max_tokens)
                row = phase(start)
                row.sent += 1
                if cause is not None:
                    row.failed += 1
                    row.causes[cause] += 1
                else:
                    row.latencies.append(time.monotonic() - t0 - start)
                n += 1

        async def fault() -> None:
            await asyncio.sleep(cfg.kill_at)
            marks["killed"] = time.monotonic() - t0
            await self._break(victim)
            await asyncio.sleep(max(0.0, cfg.kill_at + cfg.down_for - (time.monotonic() - t0)))
            await self._recover(victim)
            marks["restarted"] = time.monotonic() - t0

        async def footprint() -> None:
            while (now := time.monotonic() - t0) < cfg.duration:
                samples.append((now, rss_bytes(pid), open_fds(pid)))
                await asyncio.sleep(FOOTPRINT_EVERY)

        async def warm_sample() -> tuple[int, int]:
            await asyncio.sleep(min(cfg.kill_at / 2, 10.0))
            return rss_bytes(pid), open_fds(pid)

        samples: list[tuple[float, int, int]] = []

        timeout = aiohttp.ClientTimeout(total=cfg.request_timeout)
        async with aiohttp.ClientSession(timeout=timeout, connector=aiohttp.TCPConnector(limit=cfg.clients)) as session:
            warm = asyncio.create_task(warm_sample())
            sampler = asyncio.create_task(footprint())
            await asyncio.gather(fault(), *(client(i, session) for i in range(cfg.clients)))
            rss_start, fds_start = await warm
            await sampler
            victim_health = await self._health_of(session, victim)
        return ClosedLoopReport(cfg, [rows[p] for p in PHASES], rss_start, rss_bytes(pid), fds_start, open_fds(pid),
                                marks["killed"], marks["restarted"], victim_health, samples)

    async def _break(self, engine: SimEngine) -> None:
        fault = self.config.fault
        if fault == "kill":
            await asyncio.to_thread(engine.stop, True)
        elif fault == "hang":
            engine.signal(signal.SIGSTOP)
        else:
            await engine.restart(["--time-scale", str(self.config.time_scale * SLOW_FACTOR)])

    async def _recover(self, engine: SimEngine) -> None:
        fault = self.config.fault
        if fault == "kill":
            await asyncio.to_thread(engine.start)
        elif fault == "hang":
            engine.signal(signal.SIGCONT)
        else:
            await engine.restart()

    async def _health_of(self, session: aiohttp.ClientSession, engine: SimEngine) -> dict[str, float]:
        """``state`` → 0/1 and ``ejections`` for ``engine`` from epp's /metrics."""
        assert self.picker is not None
        async with session.get(f"http://127.0.0.1:{self.picker.metrics_port}/metrics") as reply:
            text = await reply.text()
        out: dict[str, float] = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.labels.get("endpoint") != engine.upstream.hostport:
                    continue
                if sample.name == "epp_endpoint_health":
                    out[sample.labels["state"]] = sample.value
                elif sample.name == "epp_endpoint_ejections_total":
                    out["ejections"] = sample.value
        return out


async def run_closed_loop(config: ClosedLoopConfig, workdir: Path) -> ClosedLoopReport:
    """Start everything, run, stop everything (by PID), return the report."""
    loop = ClosedLoop(config, workdir)
    try:
        await loop.start()
        return await loop.run()
    finally:
        loop.stop()


def render(reports: list[ClosedLoopReport]) -> str:
    """A markdown table: one row per (policy, gateway, phase), then the run's totals and epp's footprint."""
    lines = [
        "| policy | gateway | fault | phase | requests | failed | success | p50 / p99 s | causes |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in reports:
        run = f"| {_policy(r)} | {_gateway(r)} | {r.config.fault}"
        for p in [*r.phases, _total(r)]:
            causes = ", ".join(f"{c} {n}" for c, n in p.causes.most_common()) or "-"
            lines.append(f"{run} | {p.phase} | {p.sent} | {p.failed} | {100 * p.success:.2f}% "
                         f"| {p.latency(0.5):.3f} / {p.latency(0.99):.3f} | {causes} |")
    lines += ["", "| policy | gateway | fault | epp RSS MB every 15 s (from warm-up) | epp FDs (warm → end) |",
              "|---|---|---|---|---|"]
    for r in reports:
        rss = " ".join(f"{b / 2**20:.0f}" for _, b, _ in r.footprint) or "-"
        lines.append(f"| {_policy(r)} | {_gateway(r)} | {r.config.fault} | {rss} → {r.rss_end / 2**20:.0f} "
                     f"| {r.fds_start} → {r.fds_end} |")
    return "\n".join(lines)


def _policy(report: ClosedLoopReport) -> str:
    cfg = report.config
    extra = " ".join(cfg.picker_args) + (f" [epp from {cfg.picker_tree}]" if cfg.picker_tree else "")
    return (cfg.policy or "(no config)") + (f" {extra.strip()}" if extra.strip() else "")


def _gateway(report: ClosedLoopReport) -> str:
    return "retry policy" if report.config.retries else "no retries"


def _total(report: ClosedLoopReport) -> PhaseRow:
    total = PhaseRow("**all**")
    for p in report.phases:
        total.sent += p.sent
        total.failed += p.failed
        total.causes.update(p.causes)
        total.latencies.extend(p.latencies)
    return total
