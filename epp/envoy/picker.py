"""``epp serve`` as a child process: the picker a local Envoy calls (demo, e2e tests, benchmarks, live replay).

The child is ``sys.executable -m epp serve`` so it runs the same code and environment as the caller. It is
ready when its plain-text gRPC health port reports the ext_proc service SERVING (the pool is synced).
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from epp._util import proc as proc_util
from epp.envoy.config import Upstream

EXT_PROC_SERVICE = "envoy.service.ext_proc.v3.ExternalProcessor"


class PickerProcess:
    """One ``epp serve --static-endpoints …`` child on free ports; ``start`` blocks until it serves.

    With ``endpoints_file`` the pool comes from that (watched) file instead of ``endpoints``; with neither,
    from ``extra_args`` (e.g. a config whose ``dataLayer.discovery`` names a file-discovery plugin).

    ``tls`` turns on ``--secure-serving`` (self-signed certificate, as the reference does); ``extra_args``
    are passed through verbatim (e.g. ``--max-body-bytes``). stderr goes to ``log_path`` when given. ``cwd``
    and ``env`` let a benchmark run another source tree's epp (``python -m`` imports from the cwd first).
    """

    name = "epp serve"  # for messages; subclasses running another subcommand say which

    def __init__(
        self,
        endpoints: Sequence[Upstream],
        *,
        tls: bool = False,
        extra_args: Sequence[str] = (),
        log_path: Path | None = None,
        host: str = "127.0.0.1",
        endpoints_file: Path | None = None,
        cwd: Path | None = None,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.endpoints = tuple(endpoints)
        self.endpoints_file = endpoints_file
        self.tls = tls
        self.extra_args = tuple(extra_args)
        self.log_path = log_path
        self.host = host
        self.cwd = cwd
        self.env = dict(env) if env is not None else None
        self.grpc_port = proc_util.free_port(host)
        self.health_port = proc_util.free_port(host)
        self.metrics_port = proc_util.free_port(host)
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> Upstream:
        return Upstream(self.host, self.grpc_port)

    @property
    def pid(self) -> int:
        if self._proc is None:
            raise RuntimeError(f"{self.name} is not running")
        return self._proc.pid

    def command(self) -> list[str]:
        if self.endpoints_file is not None:
            source = ["--endpoints-file", str(self.endpoints_file)]
        elif self.endpoints:
            source = ["--static-endpoints", ",".join(u.hostport for u in self.endpoints)]
        else:
            source = []
        return [
            sys.executable, "-m", "epp", "serve",
            *source,
            f"--secure-serving={'true' if self.tls else 'false'}",
            "--grpc-port", str(self.grpc_port),
            "--grpc-health-port", str(self.health_port),
            "--metrics-port", str(self.metrics_port),
            "--bind-address", self.host,
            # Local stacks stop Envoy before the picker, so a drain would only make every stop wait out
            # the 5 s grace; whoever tests draining passes its own --drain-timeout (later flags win).
            "--drain-timeout", "0s",
            *self.extra_args,
        ]  # fmt: skip

    def start(self, timeout: float = 30.0) -> None:
        if self._proc is not None:
            raise RuntimeError(f"{self.name} already started")
        stderr = self.log_path.open("ab") if self.log_path is not None else subprocess.DEVNULL
        try:
            self._proc = proc_util.spawn(
                self.command(), stdout=subprocess.DEVNULL, stderr=stderr, cwd=self.cwd, env=self.env
            )
        finally:
            if self.log_path is not None:
                stderr.close()  # type: ignore[union-attr]
        deadline = time.monotonic() + timeout
        while not self._serving():
            if self._proc.poll() is not None:
                code, self._proc = self._proc.returncode, None
                raise RuntimeError(f"{self.name} exited with {code} during start-up; log: {self.log_path}")
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"{self.name} not serving after {timeout:.0f}s; log: {self.log_path}")
            time.sleep(0.1)

    def _serving(self) -> bool:
        with grpc.insecure_channel(f"{self.host}:{self.health_port}") as channel:
            try:
                reply = health_pb2_grpc.HealthStub(channel).Check(
                    health_pb2.HealthCheckRequest(service=EXT_PROC_SERVICE), timeout=0.5
                )
            except grpc.RpcError:
                return False
        return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)

    def cpu_seconds(self) -> float:
        """User + system CPU seconds the child has used so far."""
        return proc_util.cpu_seconds(self.pid)

    def stop(self, grace: float = 5.0) -> int | None:
        proc, self._proc = self._proc, None
        return None if proc is None else proc_util.stop(proc, grace)

    def __enter__(self) -> PickerProcess:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

