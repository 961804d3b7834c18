"""The running picker behind ``epp serve``: its parts, built from the parsed flags, started in order.

Built (no I/O, so every configuration error surfaces before anything listens): datastore → telemetry
→ config (``--config-file``/``--config-text``, else the reference default) → scheduler, attached to the
datastore → endpoint source (``epp.discovery.sources``) → admission (``epp.flowcontrol``: flow control's
queues, or shedding) → director → metrics poller → servers. ``setup`` starts the source, the poller,
flow control's ticker, plugins with background work, the metrics port and the gRPC servers in that order; the stack stops them in reverse (health NOT_SERVING first, new streams served
for ``--drain-timeout``, open ones given ``--shutdown-grace``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import ssl
from collections.abc import AsyncIterator
from types import TracebackType

import grpc

from epp import __version__
from epp._util.cli import Shutdown
from epp.app import DEFAULT_POLICY, health_params, metrics_auth_enabled
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
from epp.extproc.tls import server_credentials, server_ssl_context
from epp.metrics import MetricsPoller
from epp.metrics.sources import attribute_pollers
from epp.serve_flags import engine_specs, metrics_ssl_context, scrape_target, tls_options
from epp.scheduling.scheduler import Scheduler
from epp.telemetry import Telemetry
from epp.telemetry.auth import KubeMetricsAuth
from epp.telemetry.flowcontrol import FlowControlMetrics
from epp.telemetry.http import MetricsServer

log = logging.getLogger("epp.serve")


def load_policy(args: argparse.Namespace, clock: Clock) -> tuple[EndpointPickerConfig, Scheduler]:
    """``--config-text``, else ``--config-file`` (a path or preset name), else the default preset."""
    allow = args.allow_experimental_plugins
    if args.config_text:
        config = parse_config_text(args.config_text)
        return config, build_scheduler(config, clock=clock, allow_experimental=allow)
    return load_config_and_scheduler(args.config_file or DEFAULT_POLICY, clock=clock, allow_experimental=allow)


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

    def __init__(self, args: argparse.Namespace) -> None:
        if args.fallback_endpoints < 0:
            raise ValueError("--fallback-endpoints must not be negative")
        self.datastore = Datastore(staleness_threshold=args.metrics_staleness_threshold, health=health_params(args))
        self.telemetry = Telemetry(self.datastore, pool_name=args.pool_name, build_ref=__version__)
        config, self.scheduler = load_policy(args, self.datastore.clock)
        # Plugins with per-endpoint state (prefix index, LRUs) follow membership from here on: removed
        # endpoints are purged, and index slots are reserved at discovery instead of inside a pick.
        self.scheduler.attach(self.datastore)
        self.data_layer = DataLayer(self.scheduler.data_needs)  # the plugins' feeds, opened at setup
        self.data_layer.attach(self.datastore)
        self.telemetry.instrument(self.scheduler)  # plugin_duration_seconds, prefix_indexer_*
        self.source = select_source(args, config, self.datastore, self.telemetry.registry)
        native = args.grpc_server == "native"
        credentials: grpc.ServerCredentials | ssl.SSLContext | None = None
        if args.secure_serving:
            if native:
                credentials = server_ssl_context(args.cert_path or None, args.enable_cert_reload, tls_options(args))
            else:
                credentials = server_credentials(args.cert_path or None, args.enable_cert_reload)
        flow_metrics = FlowControlMetrics(self.telemetry.registry, args.pool_name, self.telemetry.model_labels,
                                          self.telemetry.fairness_labels)
        self.admission = build_admission(config, self.scheduler, self.datastore.routable_endpoints, self.datastore.clock,
                                         flow_metrics)
        self.director = Director(
            self.datastore, self.scheduler, self.telemetry, admission=self.admission,
            subset_filter=not args.disable_endpoint_subset_filter, objective_priority=self.source.objective_priority,
            model_rewriter=self.source.model_rewriter, parsers=request_parsers(config, self.scheduler),
            emit_endpoint_scores=args.emit_endpoint_scores, fallbacks=args.fallback_endpoints,
        )
        election = args.ha_enable_leader_election and self.source.name == "kubernetes"
        health = HealthService(readiness=self.source.ready, leader_election=election)
        self.poller = MetricsPoller(self.datastore, interval=args.refresh_metrics_interval,
                                    registry=self.telemetry.registry, target=scrape_target(args, config),
                                    specs=engine_specs(args))
        self.attribute_pollers = attribute_pollers(config.source_extractors(), self.scheduler.plugins, self.datastore,
                                                   args.refresh_metrics_interval)  # DCGM, /v1/models
        # A worker of ``epp serve --workers N`` shares the ext_proc port with its siblings; its health and
        # metrics ports are private to the parent (loopback, free ports), which serves the pod's aggregate.
        worker = bool(getattr(args, "worker", False))
        private = "127.0.0.1" if worker else None
        self.limiter = StreamLimiter(args.max_concurrent_streams, args.max_body_bytes, registry=self.telemetry.registry)
        servicer = ExtProcServicer(self.director, args.max_body_bytes, self.limiter)
        if args.enable_grpc_stream_metrics:
            servicer.stream_metrics = StreamMetrics(self.telemetry.registry)
        self.server = PickerServer(
            servicer, health,
            port=args.grpc_port, health_port=args.grpc_health_port, host=args.bind_address or "[::]",
            credentials=credentials, max_message_bytes=args.max_body_bytes, health_on_main_port=args.health_checking,
            max_concurrent_rpcs=args.max_concurrent_streams * GRPC_BACKSTOP_FACTOR, native=native,
            grpc_max_recv_bytes=args.grpc_max_recv_msg_size, grpc_max_send_bytes=args.grpc_max_send_msg_size,
            reuse_port=worker, health_host=private,
        )
        self.metrics_auth = KubeMetricsAuth(args.kubeconfig) if metrics_auth_enabled(args) else None
        self.metrics = MetricsServer(self.telemetry, args.metrics_port, host=private or args.bind_address or None,
                                     auth=self.metrics_auth,
                                     ssl_context=metrics_ssl_context(args, self.metrics_auth is not None))
        self.drain_timeout: float = args.drain_timeout
        self.shutdown_grace: float = args.shutdown_grace
        self._stack = contextlib.AsyncExitStack()

    async def setup(self, stack: contextlib.AsyncExitStack, shutdown: Shutdown) -> None:
        """Start every part into ``stack`` (which stops them in reverse); the serve loop's ``setup``."""
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
