"""Local model servers for the demo, e2e tests and benchmarks.

``start_engines`` is the one place that decides what serves requests locally: today the echo engines of
``epp.demo.echo_engine`` (one child process hosting all of them); swapping in ``epp sim`` processes only
means changing this function — callers use the returned ``EngineFleet`` (names, addresses, stop).
"""

from __future__ import annotations

import subprocess
import sys
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


def start_engines(names: Sequence[str], timeout: float = 30.0) -> EngineFleet:
    """Start one echo engine per name on free 127.0.0.1 ports and wait until all listen."""
    args = [sys.executable, "-m", "epp.demo.echo_engine"]
    for name in names:
        args += ["--name", name]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE)
    try:
        ports: dict[str, int] = orjson.loads(proc_util.read_line(proc, timeout))
    except BaseException:
        proc_util.stop(proc)
        raise
    return EngineFleet({name: Upstream("127.0.0.1", ports[name]) for name in names}, [proc])
