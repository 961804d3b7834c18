"""Real vLLM engines for the opt-in suite: ``python -m vllm.entrypoints.openai.api_server`` from the
venv ``make test-vllm`` builds (``VLLM_PYTHON``), on the tiny model folder, one core each."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from epp._util import proc as proc_util

MODEL_DIR = Path(__file__).parents[1] / "tests" / "data" / "vllm-0.32-cpu" / "tiny-llama"
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


@dataclass
class Engine:
    port: int
    events_port: int
    log_path: Path
    proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def hostport(self) -> str:
        return f"127.0.0.1:{self.port}"

    def command(self, python: str) -> list[str]:
        events = {"enable_kv_cache_events": True, "publisher": "zmq", "endpoint": f"tcp://*:{self.events_port}"}
        return [
            python, "-m", "vllm.entrypoints.openai.api_server", "--model", str(MODEL_DIR),
            "--load-format", "dummy", "--dtype", "bfloat16", "--max-model-len", "4096", "--enforce-eager",
            "--host", "127.0.0.1", "--port", str(self.port), "--kv-events-config", json.dumps(events),
        ]  # fmt: skip

    def start(self, python: str, core: int) -> None:
        env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_CPU_OMP_THREADS_BIND": str(core),
               "HF_HUB_OFFLINE": "1", "VLLM_NO_USAGE_STATS": "1", "DO_NOT_TRACK": "1"}  # fmt: skip
        with self.log_path.open("ab") as log:
            self.proc = proc_util.spawn(self.command(python), stdout=log, stderr=subprocess.STDOUT, env=env)

    def ready(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            tail = self.log_path.read_text(errors="replace")[-4000:]
            raise RuntimeError(f"vLLM on port {self.port} exited with {self.proc.returncode}:\n{tail}")
        try:
            with urllib.request.urlopen(f"http://{self.hostport}/v1/models", timeout=2) as reply:
                return reply.status == 200
        except (urllib.error.URLError, OSError):
            return False

    def metrics(self) -> Samples:
        text = urllib.request.urlopen(f"http://{self.hostport}/metrics", timeout=10).read().decode()
        return {(s.name, tuple(sorted(s.labels.items()))): s.value
                for f in text_string_to_metric_families(text) for s in f.samples}  # fmt: skip

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None:
            proc_util.stop(proc, grace=20)


def _bindable(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("0.0.0.0", port))
        except OSError:
            return False
    return True


DEFAULT_EVENTS_PORT = 5557  # the engine: `"endpoint": "tcp://*:5557"`, where epp looks by default


def start_engines(python: str, workdir: Path, count: int = 2, timeout: float = 420.0) -> list[Engine]:
    """``count`` engines; the first publishes its events on 5557, as a default deployment does."""
    if not _bindable(DEFAULT_EVENTS_PORT):
        raise RuntimeError(f"port {DEFAULT_EVENTS_PORT} is taken on this host: the first engine publishes there")
    events = [DEFAULT_EVENTS_PORT] + [proc_util.free_port() for _ in range(count - 1)]
    engines = [Engine(proc_util.free_port(), events[i], workdir / f"vllm-{i}.log") for i in range(count)]
    try:
        for core, engine in enumerate(engines):
            engine.start(python, core % (os.cpu_count() or 1))
        deadline = time.monotonic() + timeout
        for engine in engines:
            while not engine.ready():
                if time.monotonic() > deadline:
                    raise RuntimeError(f"vLLM on port {engine.port} not ready after {timeout:.0f}s; log: {engine.log_path}")
                time.sleep(1.0)
    except BaseException:
        for engine in engines:
            engine.stop()
        raise
    return engines
