"""``epp sim`` engines as child processes on fixed ports, restartable with other fault flags.

The simulator takes its faults as flags, so injecting one means restarting that engine with the flag on
the same port (the pool and Envoy keep pointing at it). Every process is stopped by its own PID.
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from epp._util import proc as proc_util
from epp.envoy.config import Upstream

MODEL = "soak-model"


class SimEngine:
    """One ``epp sim`` on 127.0.0.1:``port``; ``flags`` are the fault/speed flags of the current run."""

    def __init__(self, name: str, port: int, log_path: Path, time_scale: float, seed: int) -> None:
        self.name = name
        self.port = port
        self.log_path = log_path
        self.time_scale = time_scale
        self.seed = seed
        self.flags: tuple[str, ...] = ()
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def upstream(self) -> Upstream:
        return Upstream("127.0.0.1", self.port)

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def command(self, flags: Sequence[str]) -> list[str]:
        return [
            sys.executable, "-m", "epp", "sim", "--host", "127.0.0.1", "--port", str(self.port),
            "--served-model-name", MODEL, "--profile", "llama-3.2-1b-h100", "--time-scale", str(self.time_scale),
            "--seed", str(self.seed), "--default-max-tokens", "16", *flags,
        ]  # fmt: skip

    def start(self, flags: Sequence[str] = (), timeout: float = 30.0) -> None:
        """Spawn and block until the port accepts connections."""
        if self._proc is not None:
            raise RuntimeError(f"engine {self.name} already running")
        self.flags = tuple(flags)
        with self.log_path.open("ab") as log:
            self._proc = subprocess.Popen(self.command(flags), stdout=subprocess.DEVNULL, stderr=log)
        deadline = time.monotonic() + timeout
        while not proc_util.port_open("127.0.0.1", self.port):
            if self._proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"engine {self.name} did not start; see {self.log_path}")
            time.sleep(0.05)

    def signal(self, sig: signal.Signals) -> None:
        """Send ``sig`` to the running engine (e.g. SIGSTOP / SIGCONT: a hung engine that later resumes)."""
        if self._proc is None or self._proc.poll() is not None:
            raise RuntimeError(f"engine {self.name} is not running")
        self._proc.send_signal(sig)

    def stop(self, hard: bool = False) -> None:
        """SIGKILL (a crash) when ``hard``, else SIGTERM; waits for the exit."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if hard and proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
        proc_util.stop(proc)

    async def restart(self, flags: Sequence[str] = (), hard: bool = False) -> None:
        await asyncio.to_thread(self.stop, hard)
        await asyncio.to_thread(self.start, flags)


def start_engines(count: int, workdir: Path, time_scale: float) -> list[SimEngine]:
    """``count`` engines named e0… on free ports, all running on return (or none, on failure)."""
    engines = [SimEngine(f"e{i}", proc_util.free_port(), workdir / f"e{i}.log", time_scale, seed=i) for i in range(count)]
    try:
        for engine in engines:
            engine.start()
    except BaseException:
        for engine in engines:
            engine.stop()
        raise
    return engines
