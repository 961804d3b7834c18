"""Real ``epp sim`` processes on 127.0.0.1 for the HTTP tests."""

from __future__ import annotations

import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from epp._util.proc import spawn

LLM_D_TOPIC = "kv@{host}:{port}@{model}"
"""llm-d's topic convention: a picker that binds one socket for every engine (``mode: bind``) tells
engines apart by it. vLLM's (and the simulator's) default topic is empty."""

_LISTENING = re.compile(rb"listening on http://127\.0\.0\.1:(\d+)")


@dataclass
class SimProcess:
    proc: subprocess.Popen[bytes]
    port: int
    log: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@contextmanager
def run_sim(*args: str, timeout: float = 20.0) -> Iterator[SimProcess]:
    """Start ``epp sim --port 0`` and wait for its "listening" log line; always stop it by PID."""
    with tempfile.TemporaryDirectory() as tmp:
        log = Path(tmp) / "sim.log"
        with log.open("wb") as sink:
            proc = spawn(
                [sys.executable, "-m", "epp", "sim", "--host", "127.0.0.1", "--port", "0", *args],
                stdout=sink,
                stderr=subprocess.STDOUT,
            )
        try:
            deadline = time.monotonic() + timeout
            while not (match := _LISTENING.search(log.read_bytes())):
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"epp sim did not start: {log.read_text()}")
                time.sleep(0.05)
            yield SimProcess(proc, int(match.group(1)), log)
        finally:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()


@pytest.fixture(scope="module")
def sim() -> Iterator[SimProcess]:
    """A small fast engine shared by a module's tests: few KV blocks so eviction is reachable."""
    with run_sim("--kv-cache-blocks", "400", "--time-scale", "0.05", "--lora", "adapter-a",
                 "--enable-prompt-tokens-details") as proc:  # fmt: skip
        yield proc
