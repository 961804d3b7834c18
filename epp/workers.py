"""``epp serve --workers N``: N picker processes sharing the ext_proc port, so one pod uses the cores it has.

CPython runs one picker on one core; a pod given two cores needs two processes. Each worker is a full
replica (its own datastore, scheduler state and engine scrapes): with N > 1 a worker sees only its own
in-flight requests, exactly like N pods (share the prefix view through ``redisUrl`` to keep hits).

The parent (this module's ``supervise``):
- checks the ext_proc port is free with a plain bind (no SO_REUSEPORT) and holds it with a bound, never
  listening SO_REUSEPORT socket, so a second epp on the port still fails clearly (grpc.aio cannot adopt a
  listening socket, so each worker binds the port itself with SO_REUSEPORT and the kernel spreads the
  gateway's connections over them);
- owns the pod's health port (SERVING while every running worker is SERVING and at least one runs) and
  metrics port (the workers' /metrics merged: counters and histograms summed, per-worker gauges summed,
  pool-wide gauges — the same value in every worker — as their max, connection gauges as their min);
- restarts a worker that dies (logged with its exit code) so the other workers' streams survive; a worker
  failing at start-up with a configuration error (exit 2) or crash-looping ends the pod (exit 2 / 1),
  which Kubernetes reports as CrashLoopBackOff;
- forwards SIGTERM/SIGINT to every worker (each drains as a single ``epp serve`` does) and exits when all
  have stopped. Workers exit when the parent dies (their stdin, the parent's pipe, reaches EOF).

A worker is ``python -m epp.workers``: its ``ServeConfig`` (the parent's, ``for_worker()``) arrives
pickled on stdin; it serves health and metrics on free loopback ports and prints them as one JSON line
on stdout once it serves.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import pickle
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator

import aiohttp
import grpc
import orjson
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client import CollectorRegistry
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families

from epp._util.cli import SIGNALS, run_async
from epp._util.logs import configure_logging
from epp.extproc.health import HealthService
from epp.extproc.server import HEALTH_MAX_RPCS, NO_REUSEPORT, bind_error
from epp.serve_config import ServeConfig, metrics_ssl_context
from epp.telemetry.auth import KubeMetricsAuth

log = logging.getLogger("epp.workers")

POLL_INTERVAL_S = 0.5
RESTART_DELAY_S = 1.0
# More restarts than this within the window means the workers cannot run here: let Kubernetes back off.
CRASH_LOOP_RESTARTS = 5
CRASH_LOOP_WINDOW_S = 60.0
START_TIMEOUT_S = 120.0
CONFIG_ERROR_EXIT = 2

# Gauges counting something each worker holds for itself: the pod's value is the sum.
SUMMED_GAUGES = frozenset({
    "inference_objective_running_requests", "llm_d_epp_request_running",
    "epp_extproc_streams", "epp_extproc_streams_limit", "epp_extproc_buffered_bytes",
    "epp_extproc_stream_buffer_limit_bytes",
})
# Connection gauges (1 = connected): the pod is connected only when every worker is.
MIN_GAUGES = frozenset({"epp_kv_events_connected", "epp_prefix_shared_connected", "epp_shared_state_connected",
                        "epp_discovery_api_reachable"})


def merge_metrics(texts: Iterable[str]) -> list[Metric]:
    """The workers' Prometheus text expositions as one pod's metric families (see the module docstring)."""
    families: dict[str, Metric] = {}
    values: dict[str, dict[tuple[str, tuple[tuple[str, str], ...]], float]] = {}
    for text in texts:
        for family in text_string_to_metric_families(text):
            families.setdefault(family.name, Metric(family.name, family.documentation, family.type))
            combine = _combiner(family.name, family.type)
            samples = values.setdefault(family.name, {})
            for sample in family.samples:
                key = (sample.name, tuple(sorted(sample.labels.items())))
                samples[key] = combine(samples[key], sample.value) if key in samples else sample.value
    for name, family in families.items():
        for (sample_name, labels), value in values[name].items():
            family.add_sample(sample_name, dict(labels), value)
    return list(families.values())


def _combiner(name: str, kind: str) -> Callable[[float, float], float]:
    if kind != "gauge" or name in SUMMED_GAUGES:
        return lambda a, b: a + b  # counters, histograms, summaries, per-worker gauges
    return min if name in MIN_GAUGES else max


class _Merged:
    """A collector yielding the last merged families (the registry ``generate_latest`` renders)."""

    def __init__(self) -> None:
        self.families: list[Metric] = []

    def collect(self) -> Iterator[Metric]:
        return iter(self.families)


def check_port_free(host: str, port: int) -> socket.socket:
    """Fail (OSError) when anything holds ``port``; else return a bound, non-listening SO_REUSEPORT socket
    that keeps holding it for the workers (a later plain bind — another epp — fails; connections go only
    to listening sockets, i.e. the workers)."""
    family, address = _bind_address(host, port)
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        try:
            probe.bind(address)
        except OSError as exc:
            raise OSError(f"cannot listen on {host or '[::]'}:{port} for ext_proc: the port is in use "
                          f"(another epp?) ({exc.strerror})") from None
    holder = socket.socket(family, socket.SOCK_STREAM)
    holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    holder.bind(address)
    return holder


def _bind_address(host: str, port: int) -> tuple[socket.AddressFamily, tuple[str, int]]:
    host = host.strip("[]")
    if host in ("", "::"):
        return socket.AF_INET6, ("::", port)
    family, _, _, _, sockaddr = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    address, bound_port = sockaddr[0], sockaddr[1]
    assert isinstance(address, str) and isinstance(bound_port, int), sockaddr  # IP families: (host, port, ...)
    return family, (address, bound_port)


class Worker:
    """One ``python -m epp.workers`` child; ``ports`` once it serves."""

    def __init__(self, index: int) -> None:
        self.index = index
        self.proc: asyncio.subprocess.Process | None = None
        self.health_port = 0
        self.metrics_port = 0
        self.serving = False
        self.signalled = False

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.returncode is None and self.health_port > 0

    async def start(self, config: ServeConfig) -> None:
        """Spawn and wait for the ready line; raises ``ChildProcessError`` with the exit code if it dies first."""
        self.health_port = self.metrics_port = 0
        self.serving = self.signalled = False
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "epp.workers", stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            start_new_session=True,  # a terminal's Ctrl-C reaches the parent only, which forwards it once
        )
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(pickle.dumps(config))
        await self.proc.stdin.drain()  # stdin stays open: its EOF tells the worker the parent is gone
        line = await asyncio.wait_for(self.proc.stdout.readline(), START_TIMEOUT_S)
        if not line:
            raise ChildProcessError(await self.proc.wait())
        ports = orjson.loads(line)
        self.health_port, self.metrics_port = int(ports["health_port"]), int(ports["metrics_port"])
        log.info("worker %d (pid %d) serving", self.index, self.proc.pid)

    def signal(self, sig: int) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.send_signal(sig)
            self.signalled = True


class Supervisor:
    """The parent process of ``epp serve --workers N`` (see the module docstring)."""

    def __init__(self, config: ServeConfig) -> None:
        self.config = config
        self.workers = [Worker(i) for i in range(config.serving.workers)]
        self.worker_config = config.for_worker()
        self.health = HealthService(readiness=self.ready)
        self.registry = CollectorRegistry(auto_describe=False)
        self.merged = _Merged()
        self.registry.register(self.merged)
        self.stopping = False
        self.exit_code = 0
        self._restarts: list[float] = []
        self._failed = asyncio.Event()

    def ready(self) -> bool:
        running = [w for w in self.workers if w.running]
        return bool(running) and all(w.serving for w in running)

    async def run(self) -> int:
        from epp.telemetry.http import MetricsServer

        serving, metrics_config = self.config.serving, self.config.metrics
        host = serving.bind_address
        auth = KubeMetricsAuth(metrics_config.kubeconfig) if metrics_config.auth else None
        metrics = MetricsServer(self, metrics_config.port, host=host or None, auth=auth, refresh=self.scrape,
                                ssl_context=metrics_ssl_context(metrics_config))
        async with contextlib.AsyncExitStack() as stack:
            stack.enter_context(check_port_free(host, serving.grpc_port))  # held until every worker exited
            health = grpc.aio.server(options=NO_REUSEPORT, maximum_concurrent_rpcs=HEALTH_MAX_RPCS)
            health_pb2_grpc.add_HealthServicer_to_server(self.health, health)
            address = f"{host or '[::]'}:{serving.grpc_health_port}"
            with bind_error(address, "health"):
                health.add_insecure_port(address)
            await health.start()
            stack.push_async_callback(health.stop, 0)
            if auth is not None:
                await stack.enter_async_context(auth)
            await metrics.start()
            stack.push_async_callback(metrics.stop)
            tasks = [asyncio.create_task(self._keep(w)) for w in self.workers]
            poll = asyncio.create_task(self._poll())
            failed = asyncio.create_task(self._failed.wait())
            log.info("epp serving with %d workers on ext_proc :%d, health :%d, metrics :%d", len(self.workers),
                     serving.grpc_port, serving.grpc_health_port, metrics.port)
            await asyncio.wait([*tasks, failed], return_when=asyncio.FIRST_COMPLETED)
            if self._failed.is_set():
                self.stop(signal.SIGTERM)
            await asyncio.gather(*tasks)
            for task in (poll, failed):
                task.cancel()
        log.info("stopped")
        return self.exit_code

    def stop(self, sig: int) -> None:
        """SIGTERM/SIGINT: health NOT_SERVING, every worker drains (a second signal is forwarded too)."""
        if not self.stopping:
            log.info("shutting down %d workers", len(self.workers))
        self.stopping = True
        self.health.drain()
        for worker in self.workers:
            worker.signal(sig)

    async def _keep(self, worker: Worker) -> None:
        """Run ``worker`` until the pod stops, restarting it when it dies."""
        while not self.stopping:
            try:
                await worker.start(self.worker_config)
            except ChildProcessError as exc:
                code = exc.args[0]
                if self.stopping:
                    return
                if code == CONFIG_ERROR_EXIT:  # the same flags fail in every worker: report once, end the pod
                    self._fail(CONFIG_ERROR_EXIT, f"worker {worker.index} exited with {code} at start-up")
                    return
            except TimeoutError:
                worker.signal(signal.SIGKILL)
            if self.stopping and not worker.signalled:  # stopped while it was being spawned: drain it too
                worker.signal(signal.SIGTERM)
            assert worker.proc is not None
            code = await worker.proc.wait()
            if self.stopping:
                return
            log.error("worker %d (pid %d) exited with %d; restarting it (the other workers keep serving)",
                      worker.index, worker.proc.pid, code)
            now = time.monotonic()
            self._restarts = [t for t in self._restarts if now - t < CRASH_LOOP_WINDOW_S] + [now]
            if len(self._restarts) > CRASH_LOOP_RESTARTS:
                self._fail(1, f"{len(self._restarts)} worker restarts within {CRASH_LOOP_WINDOW_S:.0f}s")
                return
            await asyncio.sleep(RESTART_DELAY_S)

    def _fail(self, code: int, why: str) -> None:
        log.error("%s: stopping the pod", why)
        self.exit_code = code
        self._failed.set()

    async def _poll(self) -> None:
        """Each running worker's health, every ``POLL_INTERVAL_S`` (``ready`` reads the cached verdicts)."""
        while True:
            for worker in self.workers:
                worker.serving = worker.running and await _serving(worker.health_port)
            await asyncio.sleep(POLL_INTERVAL_S)

    async def scrape(self) -> None:
        """Merge every running worker's /metrics into the registry the metrics port renders."""
        running = [w for w in self.workers if w.running]
        timeout = aiohttp.ClientTimeout(total=5)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            texts = await asyncio.gather(*(_fetch(session, w.metrics_port) for w in running))
        self.merged.families = merge_metrics(t for t in texts if t)


async def _serving(port: int) -> bool:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        try:
            reply = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=1.0)
        except grpc.RpcError:
            return False
    return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)


async def _fetch(session: aiohttp.ClientSession, port: int) -> str:
    """A worker's /metrics text, or "" when it is gone (a dying worker must not fail the pod's scrape)."""
    with contextlib.suppress(aiohttp.ClientError, TimeoutError):
        async with session.get(f"http://127.0.0.1:{port}/metrics") as reply:
            return await reply.text()
    return ""


async def supervise(config: ServeConfig) -> int:
    """``epp serve --workers N`` (N > 1): run the parent until SIGTERM/SIGINT; its exit code."""
    supervisor = Supervisor(config)
    loop = asyncio.get_running_loop()
    for sig in SIGNALS:
        loop.add_signal_handler(sig, supervisor.stop, sig)
    try:
        return await supervisor.run()
    except (OSError, ValueError) as exc:
        log.error("cannot serve: %s", exc)
        return 1
    finally:
        for sig in SIGNALS:
            loop.remove_signal_handler(sig)


def _exit_when_parent_gone() -> None:
    """SIGTERM ourselves (a normal drain) when stdin — the parent's pipe — reaches EOF."""
    while os.read(sys.stdin.fileno(), 65536):  # unbuffered: a daemon thread must hold no io lock at exit
        pass
    os.kill(os.getpid(), signal.SIGTERM)


def worker_main() -> int:
    """A worker: its configuration from stdin, serve, report the private ports on stdout once serving.
    gRPC's cipher suites are already in the environment the parent set (``prepare_grpc_tls``)."""
    from epp.service import serve

    config = pickle.load(sys.stdin.buffer)
    if not isinstance(config, ServeConfig):
        raise TypeError(f"a worker expects a ServeConfig on stdin, got {type(config).__name__}")
    configure_logging(config.logging)
    threading.Thread(target=_exit_when_parent_gone, daemon=True, name="parent-watch").start()

    def ready(health_port: int, metrics_port: int) -> None:
        sys.stdout.buffer.write(orjson.dumps({"health_port": health_port, "metrics_port": metrics_port}) + b"\n")
        sys.stdout.flush()

    return run_async(serve(config, ready))


if __name__ == "__main__":
    raise SystemExit(worker_main())

