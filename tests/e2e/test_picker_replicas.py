"""Several picker replicas (or one picker's workers) behind one real Envoy: a replica or worker SIGKILLed
mid-run costs only the streams it held."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import orjson
import pytest

from epp.demo.engines import EngineFleet, start_engines
from epp.envoy.picker import PickerProcess
from epp.envoy.process import EnvoyProcess
from epp.envoy.stack import local_config

MODEL = "demo-model"
REPLICAS = 3
CLIENTS = 6
RUN_S = 6.0
KILL_AT_S = 2.5
DETECTION_S = 0.25  # the longest Envoy may take to see a dead replica's reset connection


@dataclass
class Outcome:
    started: float
    ended: float
    status: int


@pytest.fixture
def replicated(tmp_path: Path) -> Iterator[tuple[EnvoyProcess, list[PickerProcess]]]:
    engines: EngineFleet = start_engines(["a", "b"], MODEL)
    pickers: list[PickerProcess] = []
    envoy: EnvoyProcess | None = None
    try:
        for i in range(REPLICAS):
            picker = PickerProcess(engines.upstreams, extra_args=["--health-checking"], log_path=tmp_path / f"epp-{i}.log")
            picker.start(timeout=120)
            pickers.append(picker)
        config = local_config(pickers[0].address, engines.upstreams, tmp_path / "envoy",
                              picker_replicas=tuple(p.address for p in pickers[1:]), picker_health_interval_s=0.5)
        envoy = EnvoyProcess(config, tmp_path / "envoy")
        envoy.start()
        yield envoy, pickers
    finally:
        if envoy is not None:
            envoy.stop()
        for picker in pickers:
            picker.stop()
        engines.stop()


async def _traffic(url: str, until: float) -> list[Outcome]:
    """``CLIENTS`` closed-loop clients streaming short chats until ``until`` (bounded in time and count)."""
    body = orjson.dumps({"model": MODEL, "max_tokens": 16, "stream": True,
                         "messages": [{"role": "user", "content": "tell me a story"}]})
    outcomes: list[Outcome] = []
    timeout = aiohttp.ClientTimeout(total=20)
    async with aiohttp.ClientSession(timeout=timeout) as session:

        async def client() -> None:
            while (started := time.monotonic()) < until and len(outcomes) < 5000:
                try:
                    async with session.post(url, data=body, headers={"content-type": "application/json"}) as reply:
                        await reply.read()
                        status = reply.status
                except (aiohttp.ClientError, TimeoutError):
                    status = 0  # a stream cut by the gateway is a failure too
                outcomes.append(Outcome(started, time.monotonic(), status))

        await asyncio.gather(*(client() for _ in range(CLIENTS)))
    return outcomes


async def _kill_mid_run(envoy: EnvoyProcess, pid: int) -> tuple[list[Outcome], float]:
    """Traffic for ``RUN_S`` seconds with ``pid`` SIGKILLed after ``KILL_AT_S``; outcomes and the kill time."""
    start = time.monotonic()
    traffic = asyncio.create_task(_traffic(envoy.url + "/v1/chat/completions", start + RUN_S))
    await asyncio.sleep(KILL_AT_S)
    os.kill(pid, signal.SIGKILL)
    while _alive(pid):  # "at that instant": when it is gone, not when the signal was sent
        await asyncio.sleep(0.001)
    dead_at = time.monotonic()
    return await traffic, dead_at


def _alive(pid: int) -> bool:
    """Running (a zombie or a vanished pid has released its sockets)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def _only_open_streams_failed(outcomes: list[Outcome], killed_at: float) -> None:
    """Only streams the killed process held may fail, and none that started a second after (issue #18).

    "Held" is as Envoy sees it: the kernel resets the dead process's connections when it is gone, but
    Envoy learns that on its next event-loop turn, and a stream it opens on that connection before then
    (a few ms on a busy 2-core VM) is one the dead replica held. ``DETECTION_S`` bounds that window.
    """
    failed = [o for o in outcomes if o.status != 200]
    held = [o for o in outcomes if o.started < killed_at + DETECTION_S and o.ended > killed_at]
    assert len(outcomes) > 3 * CLIENTS, "too little traffic to tell"
    assert sum(o.started > killed_at + 1.0 for o in outcomes) >= CLIENTS, "no traffic after the kill"
    assert all(o.started < killed_at + DETECTION_S for o in failed), [(o.started - killed_at, o.status) for o in failed]
    assert len(failed) <= len(held)


async def test_a_replica_killed_mid_run_costs_at_most_the_streams_it_held(
    replicated: tuple[EnvoyProcess, list[PickerProcess]],
) -> None:
    envoy, pickers = replicated
    outcomes, killed_at = await _kill_mid_run(envoy, pickers[0].pid)
    _only_open_streams_failed(outcomes, killed_at)


async def test_a_worker_killed_mid_run_costs_at_most_its_streams_and_is_restarted(tmp_path: Path) -> None:
    engines = start_engines(["a", "b"], MODEL)
    log_path = tmp_path / "epp.log"
    picker = PickerProcess(engines.upstreams, extra_args=["--workers", "2"], log_path=log_path)
    envoy: EnvoyProcess | None = None
    try:
        picker.start(timeout=120)
        workdir = tmp_path / "envoy"
        envoy = EnvoyProcess(local_config(picker.address, engines.upstreams, workdir), workdir, concurrency=4)
        envoy.start()
        pids = dict(re.findall(r"worker (\d+) \(pid (\d+)\) serving", log_path.read_text()))
        outcomes, killed_at = await _kill_mid_run(envoy, int(pids["0"]))
        _only_open_streams_failed(outcomes, killed_at)
        assert f"worker 0 (pid {pids['0']}) exited with -9; restarting it" in log_path.read_text()
    finally:
        if envoy is not None:
            envoy.stop()
        picker.stop()
        engines.stop()
