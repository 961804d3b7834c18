"""Local model servers for the demo, e2e tests and benchmarks.

``start_engines`` is the one place that decides what serves the demo's requests: ``epp sim`` processes
(vLLM-compatible, realistic latency, prefix caching). ``start_echo_engines`` starts the minimal echo engines
of ``epp.demo.echo_engine`` instead (one child process for all), which tests and the overhead benchmark use
because they report who served and what arrived, and cost next to nothing. Callers only see the returned
``EngineFleet`` (names, addresses, stop).
"""

from __future__ import annotations

import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass

import orjson

from epp._util import proc as proc_util
from epp.envoy.config import Upstream


@dataclass
class EngineFleet:
    """Running engines by name; ``stop`` ends their process(es) by PID."""

    members: dict[str, Upstream]
    processes: list[subprocess.Popen[bytes]]

    @property
    def upstreams(self) -> tuple[Upstream, ...]:
        return tuple(self.members.values())

    def name_of(self, hostport: str) -> str | None:
        """Engine name for an ``IP:PORT`` (as Envoy logs it), None if it is no member."""
        return next((name for name, up in self.members.items() if up.hostport == hostport), None)

    def stop(self) -> None:
        for proc in reversed(self.processes):
            proc_util.stop(proc)
        self.processes.clear()


def start_echo_engines(names: Sequence[str], timeout: float = 30.0) -> EngineFleet:
    """One echo engine per name on free 127.0.0.1 ports (one child process), once all listen."""
    args = [sys.executable, "-m", "epp.demo.echo_engine"]
    for name in names:
        args += ["--name", name]
    proc = proc_util.spawn(args, stdout=subprocess.PIPE)
    try:
        ports: dict[str, int] = orjson.loads(proc_util.read_line(proc, timeout))
    except BaseException:
        proc_util.stop(proc)
        raise
    return EngineFleet({name: Upstream("127.0.0.1", ports[name]) for name in names}, [proc])


def _healthy(upstream: Upstream) -> bool:
    try:
        with urllib.request.urlopen(f"http://{upstream.hostport}/health", timeout=0.5) as reply:  # noqa: S310
            return bool(reply.status == 200)
    except (OSError, urllib.error.URLError):
        return False


def start_engines(
    names: Sequence[str], model: str, timeout: float = 30.0, extra_args: Sequence[str] = (),
    engine_args: Sequence[Sequence[str]] = (),
) -> EngineFleet:
    """One ``epp sim`` process per name serving ``model`` on a free port, once every ``/health`` answers.
    ``extra_args`` go to every ``epp sim`` (e.g. ``--time-scale``), ``engine_args[i]`` to the i-th only
    (e.g. its ``--profile``)."""
    fleet = EngineFleet({}, [])
    try:
        for seed, name in enumerate(names):
            upstream = Upstream("127.0.0.1", proc_util.free_port())
            fleet.processes.append(proc_util.spawn(
                [sys.executable, "-m", "epp", "sim", "--host", upstream.host, "--port", str(upstream.port),
                 "--served-model-name", model, "--seed", str(seed), *extra_args,
                 *(engine_args[seed] if engine_args else ())],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            ))  # fmt: skip
            fleet.members[name] = upstream
        deadline = time.monotonic() + timeout
        for (name, upstream), proc in zip(fleet.members.items(), fleet.processes, strict=True):
            while not _healthy(upstream):
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"engine {name} (epp sim on {upstream.hostport}) did not become healthy")
                time.sleep(0.1)
    except BaseException:
        fleet.stop()
        raise
    return fleet
