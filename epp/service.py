"""The running picker behind ``epp serve``: its parts, built from the ``ServeConfig``, started in order.

Built (no I/O, so every configuration error surfaces before anything listens): datastore → telemetry
→ config (``--config-file``/``--config-text``, else the reference default) → scheduler, attached to the
datastore → endpoint source (``epp.discovery.sources``) → admission (``epp.flowcontrol``: flow control's
queues, or shedding) → director → metrics poller → servers. ``setup`` starts the source, the poller,
flow control's ticker, plugins with background work, the metrics port and the gRPC servers in that order; the stack stops them in reverse (health NOT_SERVING first, new streams served
for ``--drain-timeout``, open ones given ``--shutdown-grace``).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import ssl
from collections.abc import AsyncIterator, Callable
from types import TracebackType

import grpc

from epp import __version__
from epp._util.cli import Shutdown, run_until_signal
from epp._util.clock import Clock
from epp.config import EndpointPickerConfig, build_scheduler, load_config_and_scheduler, parse_config_text, request_parsers
from epp.datastore import Datastore
from epp.director import Director
from epp.datalayer import DataLayer
from epp.discovery.sources import select_source
from epp.extproc.health import HealthService
from epp.flowcontrol.build import build_admission
from epp.flowcontrol.controller import FlowController
from epp.extproc.limits import GRPC_BACKSTOP_FACTOR, StreamLimiter
from epp.extproc.server import PickerServer
from epp.extproc.servicer import ExtProcServicer
from epp.extproc.stream_metrics import StreamMetrics
from epp.extproc.tls import TlsOptions, server_credentials, server_ssl_context
from epp.metrics import MetricsPoller
from epp.metrics.sources import attribute_pollers
from epp.scheduling.scheduler import Scheduler
from epp.serve_config import (
    DEFAULT_POLICY,
    PolicyConfig,
    ServeConfig,
    ServingConfig,
    engine_specs,
    metrics_ssl_context,
    scrape_target,
)
from epp.shared.serve import shared_state
from epp.telemetry import Telemetry
from epp.telemetry.auth import KubeMetricsAuth
from epp.telemetry.flowcontrol import FlowControlMetrics
from epp.telemetry.http import MetricsServer

log = logging.getLogger("epp.serve")


GC_GEN0_THRESHOLD = 50_000


def tune_gc() -> None:
    """Freeze start-up objects out of the collector's sight and collect young objects less often.

    Every ext_proc stream allocates a burst of short-lived protobuf messages and request objects; at
    CPython's default gen-0 threshold (700) collections took ≈12 % of the picker's busy CPU, mostly
    re-scanning long-lived objects (modules, descriptors, the config). Cycles are still collected,
    in bigger batches (bench/RESULTS.md, "Cutting the picker's cost").
    """
    gc.collect()
    gc.freeze()
    _, gen1, gen2 = gc.get_threshold()
    gc.set_threshold(GC_GEN0_THRESHOLD, gen1, gen2)


def load_policy(policy: PolicyConfig, clock: Clock) -> tuple[EndpointPickerConfig, Scheduler]:
    """``--config-text``, else ``--config-file`` (a path or preset name), else the default preset."""
    allow = policy.allow_experimental_plugins
    if policy.text:
        config = parse_config_text(policy.text)
        return config, build_scheduler(config, clock=clock, allow_experimental=allow)
    return load_config_and_scheduler(policy.file or DEFAULT_POLICY, clock=clock, allow_experimental=allow)


def tls_options(serving: ServingConfig) -> TlsOptions:
    """``--tls-min-version`` (never below TLS 1.2) and ``--tls-cipher-suites`` for the native transport."""
    minimum = serving.tls_min_version or ssl.TLSVersion.TLSv1_2
    return TlsOptions(max(minimum, ssl.TLSVersion.TLSv1_2), serving.tls_cipher_suites)


FLOW_TICK_SECONDS = 0.005
"""How often flow control re-reads saturation and checks queue deadlines (it also dispatches at once
whenever a request arrives or finishes); a tick with nothing queued costs one attribute read."""


@contextlib.asynccontextmanager
async def _ticking(controller: FlowController) -> AsyncIterator[None]:
    """Tick ``controller`` while serving; on the way out every queued request is answered 503."""

    async def loop() -> None:
        while True:
            if controller.waiting:
                try:
                    controller.tick()
                except Exception:  # a failing detector must not stop dispatching for good
                    log.exception("flow control tick failed")
            await asyncio.sleep(FLOW_TICK_SECONDS)

    task = asyncio.create_task(loop(), name="flow-control")
    try:
        yield
    finally:
        task.cancel()
        controller.shutdown()


class PickerService:
    """Every part of one picker. Raises ``ValueError``/``OSError`` from the constructor on bad
    configuration; after ``async with`` the bound ports are on ``server`` and ``metrics``."""

    def __init__(self, config: ServeConfig) -> None:
        self.config = config
        serving = config.serving
        self.datastore = Datastore(staleness_threshold=config.engine_metrics.staleness_threshold, health=config.health)
        self.telemetry = Telemetry(self.datastore, pool_name=config.pool_name, build_ref=__version__)
        picker_config, self.scheduler = load_policy(config.policy, self.datastore.clock)
        # Plugins with per-endpoint state (prefix index, LRUs) follow membership from here on: removed
        # endpoints are purged, and index slots are reserved at discovery instead of inside a pick.
        self.scheduler.attach(self.datastore)
        self.data_layer = DataLayer(self.scheduler.data_needs)  # the plugins' feeds, opened at setup
        self.data_layer.attach(self.datastore)
        self.telemetry.instrument(self.scheduler)  # plugin_duration_seconds, prefix_indexer_*
        self.source = select_source(config.discovery, picker_config, self.datastore, self.telemetry.registry)
        credentials: grpc.ServerCredentials | ssl.SSLContext | None = None
        if serving.secure_serving:
            if serving.native:
                credentials = server_ssl_context(serving.cert_path or None, serving.enable_cert_reload,
                                                 tls_options(serving))
            else:
                credentials = server_credentials(serving.cert_path or None, serving.enable_cert_reload)
        flow_metrics = FlowControlMetrics(self.telemetry.registry, config.pool_name, self.telemetry.model_labels,
                                          self.telemetry.fairness_labels)
        self.admission = build_admission(picker_config, self.scheduler, self.datastore.routable_endpoints,
                                         self.datastore.clock, flow_metrics)
        routing = config.routing
        self.director = Director(
            self.datastore, self.scheduler, self.telemetry, admission=self.admission,
            subset_filter=routing.subset_filter, objective_priority=self.source.objective_priority,
            model_rewriter=self.source.model_rewriter, parsers=request_parsers(picker_config, self.scheduler),
            emit_endpoint_scores=routing.emit_endpoint_scores, fallbacks=routing.fallback_endpoints,
        )
        election = config.discovery.kubernetes.leader_election and self.source.name == "kubernetes"
        health = HealthService(readiness=self.source.ready, leader_election=election)
        engine_metrics = config.engine_metrics
        self.poller = MetricsPoller(self.datastore, interval=engine_metrics.refresh_interval,
                                    registry=self.telemetry.registry, target=scrape_target(engine_metrics, picker_config),
                                    specs=engine_specs(engine_metrics))
        self.attribute_pollers = attribute_pollers(picker_config.source_extractors(), self.scheduler.plugins, self.datastore,
                                                   engine_metrics.refresh_interval)  # DCGM, /v1/models
        # A worker of ``epp serve --workers N`` shares the ext_proc port with its siblings; its health and
        # metrics ports are private to the parent (loopback, free ports), which serves the pod's aggregate.
        private = "127.0.0.1" if serving.worker else None
        self.limiter = StreamLimiter(serving.max_concurrent_streams, serving.max_body_bytes,
                                     registry=self.telemetry.registry)
        servicer = ExtProcServicer(self.director, serving.max_body_bytes, self.limiter)
        if serving.enable_grpc_stream_metrics:
            servicer.stream_metrics = StreamMetrics(self.telemetry.registry)
        self.server = PickerServer(
            servicer, health,
            port=serving.grpc_port, health_port=serving.grpc_health_port, host=serving.bind_address or "[::]",
            credentials=credentials, max_message_bytes=serving.max_body_bytes,
            health_on_main_port=serving.health_checking,
            max_concurrent_rpcs=serving.max_concurrent_streams * GRPC_BACKSTOP_FACTOR, native=serving.native,
            grpc_max_recv_bytes=serving.grpc_max_recv_msg_size, grpc_max_send_bytes=serving.grpc_max_send_msg_size,
            reuse_port=serving.worker, health_host=private,
        )
        self.metrics_auth = KubeMetricsAuth(config.metrics.kubeconfig) if config.metrics.auth else None
        self.metrics = MetricsServer(self.telemetry, config.metrics.port, host=private or serving.bind_address or None,
                                     auth=self.metrics_auth, ssl_context=metrics_ssl_context(config.metrics))
        self.shared_state = shared_state(config.shared_state, self.scheduler.plugins, self.datastore.clock,
                                         self.telemetry.registry)
        self.drain_timeout = serving.drain_timeout
        self.shutdown_grace = serving.shutdown_grace
        self._stack = contextlib.AsyncExitStack()

    async def setup(self, stack: contextlib.AsyncExitStack, shutdown: Shutdown) -> None:
        """Start every part into ``stack`` (which stops them in reverse); ``run_until_signal``'s ``setup``."""
        await stack.enter_async_context(self.source.running)
        await stack.enter_async_context(self.poller)
        if isinstance(self.admission, FlowController):
            await stack.enter_async_context(_ticking(self.admission))
        for poller in self.attribute_pollers:
            await stack.enter_async_context(poller)
        for plugin in self.scheduler.metrics_exporters:
            plugin.register_metrics(self.telemetry.registry)
        self.data_layer.register_metrics(self.telemetry.registry)
        await stack.enter_async_context(self.data_layer)  # KV-event subscriptions, Redis replication
        if self.shared_state is not None:  # after the state it moves is live; stopped before it
            await stack.enter_async_context(self.shared_state)
        if self.metrics_auth is not None:
            try:
                await stack.enter_async_context(self.metrics_auth)
            except ValueError as exc:  # no kubeconfig / in-cluster config: exit 2 with what to change
                raise ValueError(f"--metrics-endpoint-auth needs a kube-apiserver to review scrapers' tokens ({exc}); "
                                 "pass --metrics-endpoint-auth=false to serve /metrics without auth") from None
        await self.metrics.start()
        stack.push_async_callback(self.metrics.stop)
        await self.server.start()
        stack.push_async_callback(self.server.stop, self.shutdown_grace, self.drain_timeout, shutdown.hurry, shutdown.now)
        log.info("epp ready (%s discovery): ext_proc :%d, health :%d, metrics :%d (%s)",
                 self.source.name, self.server.port, self.server.health_port, self.metrics.port,
                 "Kubernetes token auth" if self.metrics_auth is not None else "no auth")

    async def __aenter__(self) -> PickerService:
        """In-process use (tests): ``setup`` into a private stack; leaving stops at once (no drain)."""
        shutdown = Shutdown()
        shutdown.hurry.set()  # no drain period when the block ends
        async with contextlib.AsyncExitStack() as stack:
            await self.setup(stack, shutdown)
            self._stack = stack.pop_all()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self._stack.aclose()


Ready = Callable[[int, int], None]
"""Told the health and metrics ports once the picker serves (a worker of ``--workers N`` tells its parent)."""


async def serve(config: ServeConfig, ready: Ready | None = None) -> int:
    """Build (bad configuration exits 2 before anything listens), then serve until SIGTERM/SIGINT."""
    try:
        picker = PickerService(config)
    except (ValueError, OSError) as exc:
        log.error("%s", exc)
        return 2

    async def setup(stack: contextlib.AsyncExitStack, shutdown: Shutdown) -> None:
        await picker.setup(stack, shutdown)
        tune_gc()
        if ready is not None:
            ready(picker.server.health_port, picker.metrics.port)

    return await run_until_signal(setup, log)
