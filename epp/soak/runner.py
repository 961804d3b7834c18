"""One soak run: engines, ``epp serve`` on a watched endpoints file, two Envoys, traffic, faults, samples.

Topology (all 127.0.0.1): ``engines`` ``epp sim`` processes in the endpoints file plus one spare that
joins during the membership fault; one ``epp serve --endpoints-file``; a fail-closed Envoy (GIE
reference: duplex bodies, ORIGINAL_DST) and a fail-open Envoy (buffered request body, override-host
with the pool as fallback), with traffic alternating between them. Everything is started here and
stopped here by PID, whatever happens.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import signal
import time
from dataclasses import dataclass
from pathlib import Path

import aiohttp

from epp.envoy import accesslog
from epp.envoy.config import BodyMode, Routing
from epp.envoy.picker import PickerProcess
from epp.envoy.process import EnvoyProcess
from epp.envoy.stack import local_config
from epp.soak.engines import SimEngine, start_engines
from epp.soak.observe import Sample, sample_loop
from epp.soak.plan import FaultEvent, FaultKind, default_plan
from epp.soak.report import SoakReport, build_report
from epp.soak.traffic import Outcome, RequestMix, drive, probe

log = logging.getLogger(__name__)

SLOW_FACTOR = 10
DRAIN_PROBES_PER_GATEWAY = 2
DRAIN_PROBE_TOKENS = 4_000  # ~1.5 s of streaming at the soak's engine speed


@dataclass(frozen=True)
class SoakConfig:
    duration: float = 600.0
    rate: float = 12.0
    max_inflight: int = 48
    engines: int = 3
    malformed_share: float = 0.05
    time_scale: float = 0.1  # engines run 10x faster than an H100 would (1B profile)
    max_body_bytes: int = 256 * 1024
    drain_timeout_s: float = 15.0
    seed: int = 1


def write_endpoints(path: Path, engines: list[SimEngine]) -> None:
    """Atomic replace, as a ConfigMap update or an editor's save does."""
    lines = ["endpoints:"] + [f'  - {{name: {e.name}, address: "127.0.0.1", port: "{e.port}"}}' for e in engines]
    tmp = path.with_suffix(".tmp")
    tmp.write_text("\n".join(lines) + "\n")
    os.replace(tmp, path)


class Soak:
    """Owns the processes of one run; ``run`` drives traffic and faults and returns the report."""

    def __init__(self, config: SoakConfig, workdir: Path) -> None:
        self.config = config
        self.workdir = workdir
        self.members_path = workdir / "endpoints.yaml"
        self.engines: list[SimEngine] = []
        self.picker: PickerProcess | None = None
        self.envoys: dict[str, EnvoyProcess] = {}
        self.probes: list[Outcome] = []
        self._session: aiohttp.ClientSession | None = None
        self.t0 = 0.0

    @property
    def pool(self) -> list[SimEngine]:
        return self.engines[: self.config.engines]

    @property
    def spare(self) -> SimEngine:
        return self.engines[self.config.engines]

    def engine(self, name: str) -> SimEngine:
        return next(e for e in self.engines if e.name == name)

    def picker_pid(self) -> int | None:
        try:
            return self.picker.pid if self.picker is not None else None
        except RuntimeError:
            return None

    async def start(self) -> None:
        cfg = self.config
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.engines = await asyncio.to_thread(start_engines, cfg.engines + 1, self.workdir, cfg.time_scale)
        write_endpoints(self.members_path, self.pool)
        self.picker = PickerProcess(
            (), endpoints_file=self.members_path, log_path=self.workdir / "epp.log",
            extra_args=["--max-body-bytes", str(cfg.max_body_bytes), "--drain-timeout", f"{cfg.drain_timeout_s:g}s"],
        )
        await asyncio.to_thread(self.picker.start)
        upstreams = [e.upstream for e in self.engines]
        variants = {
            "fail-closed": {},
            "fail-open": {"failure_mode_allow": True, "routing": Routing.OVERRIDE_HOST,
                          "request_body_mode": BodyMode.BUFFERED},
        }
        for name, options in variants.items():
            workdir = self.workdir / f"envoy-{name}"
            workdir.mkdir(exist_ok=True)
            envoy = EnvoyProcess(local_config(self.picker.address, upstreams, workdir, **options), workdir)
            await envoy.astart()  # spawned on this (the main) thread: Envoy dies with the thread that spawned it
            self.envoys[name] = envoy

    def stop(self) -> None:
        for envoy in self.envoys.values():
            envoy.stop()
        if self.picker is not None:
            self.picker.stop(self.config.drain_timeout_s + 5)
        for engine in self.engines:
            engine.stop()

    async def run(self) -> SoakReport:
        cfg = self.config
        events = default_plan(cfg.duration, [e.name for e in self.pool], self.spare.name)
        samples: list[Sample] = []
        mix = RequestMix(random.Random(cfg.seed), cfg.malformed_share, cfg.max_body_bytes)
        gateways = [(name, envoy.url) for name, envoy in sorted(self.envoys.items())]
        assert self.picker is not None
        metrics_url = f"http://127.0.0.1:{self.picker.metrics_port}/metrics"
        self.t0 = time.monotonic()
        sampler = asyncio.create_task(sample_loop(self.picker_pid, metrics_url, self.t0, cfg.duration, samples))
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as self._session:
            faults = asyncio.create_task(self._inject(events))
            stats = await drive(gateways, mix, cfg.rate, cfg.duration, cfg.max_inflight, self.t0)
            await asyncio.gather(sampler, faults)
        stats.outcomes.extend(self.probes)
        access = {}
        for name, envoy in self.envoys.items():
            ids = [o.request_id for o in stats.outcomes if o.gateway == name]
            access.update(await asyncio.to_thread(accesslog.wait_for, Path(envoy.config.access_log_path), ids, 10.0))
        engines = {e.name: e.upstream.hostport for e in self.engines}
        return build_report(cfg.duration, stats.outcomes, stats.skipped, events, samples, access, engines)

    async def _drain_probes(self) -> list[asyncio.Task[Outcome]]:
        """Long streams on both gateways, returned once each is streaming: SIGTERM must let them finish."""
        assert self._session is not None
        tasks, started = [], []
        for name, envoy in sorted(self.envoys.items()):
            for _ in range(DRAIN_PROBES_PER_GATEWAY):
                event = asyncio.Event()
                started.append(event)
                tasks.append(asyncio.create_task(probe(self._session, envoy.url, name, DRAIN_PROBE_TOKENS, self.t0, event)))
        await asyncio.wait_for(asyncio.gather(*(e.wait() for e in started)), 30)
        return tasks

    def _now(self) -> float:
        return time.monotonic() - self.t0

    async def _inject(self, events: list[FaultEvent]) -> None:
        for event in events:
            await asyncio.sleep(max(0.0, event.at - self._now()))
            event.started = self._now()
            log.info("fault %s at %.1fs", event.name, event.started)
            await self._apply(event)
            event.ended = self._now()
            log.info("fault %s over at %.1fs", event.name, event.ended)

    async def _apply(self, event: FaultEvent) -> None:
        kind, picker = event.kind, self.picker
        assert picker is not None
        if kind is FaultKind.EPP_SIGTERM:
            probes = await self._drain_probes()
            event.started = self._now()  # the fault is the signal, sent once the probes are streaming
            await asyncio.to_thread(picker.stop, self.config.drain_timeout_s + 5)
            await asyncio.to_thread(picker.start)
            self.probes.extend(await asyncio.gather(*probes))
            return
        if kind is FaultKind.EPP_SIGKILL:
            os.kill(picker.pid, signal.SIGKILL)
            await asyncio.to_thread(picker.stop)
            await asyncio.to_thread(picker.start)
            return
        if kind is FaultKind.MEMBERSHIP:
            assert event.joins is not None
            changed = [e for e in self.pool if e.name != event.target] + [self.engine(event.joins)]
            write_endpoints(self.members_path, changed)
            await asyncio.sleep(event.duration)
            write_endpoints(self.members_path, self.pool)
            return
        engine = self.engine(event.target)
        if kind is FaultKind.ENGINE_KILL:
            await asyncio.to_thread(engine.stop, True)
            await asyncio.sleep(event.duration)
            await asyncio.to_thread(engine.start)
            return
        flags = {
            FaultKind.METRICS_GARBAGE: ["--fault-metrics", "garbage"],
            FaultKind.METRICS_HANG: ["--fault-metrics", "hang"],
            FaultKind.ENGINE_SLOW: ["--time-scale", str(self.config.time_scale * SLOW_FACTOR)],
        }[kind]
        await engine.restart(flags)
        await asyncio.sleep(event.duration)
        await engine.restart()


async def run_soak(config: SoakConfig, workdir: Path) -> SoakReport:
    """Start everything, run the plan, stop everything (by PID), return the report."""
    soak = Soak(config, workdir)
    try:
        await soak.start()
        return await soak.run()
    finally:
        soak.stop()
