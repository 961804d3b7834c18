"""The running picker behind ``epp serve``: its parts, built from the parsed flags, started in order.

Built (no I/O, so every configuration error surfaces before anything listens): datastore → telemetry
→ config (``--config-file``/``--config-text``, else the reference default) → scheduler, attached to the
datastore → endpoint source (``epp.discovery.sources``) → director → metrics poller → servers.
``setup`` starts the source, the poller, plugins with background work, the metrics port and the gRPC
servers in that order; the stack stops them in reverse (health NOT_SERVING first, new streams served
for ``--drain-timeout``, open ones given ``--shutdown-grace``).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import ssl
from types import TracebackType

import grpc

from epp import __version__
from epp._util.cli import Shutdown
from epp.app import DEFAULT_POLICY, health_params, metrics_auth_enabled
from epp._util.clock import Clock
from epp.config import EndpointPickerConfig, build_scheduler, load_config_and_scheduler, parse_config_text
from epp.datastore import Datastore
from epp.director import Director
from epp.discovery.sources import select_source
from epp.extproc.health import HealthService
from epp.extproc.limits import GRPC_BACKSTOP_FACTOR, StreamLimiter
from epp.extproc.server import PickerServer
from epp.extproc.servicer import ExtProcServicer
from epp.extproc.tls import server_credentials, server_ssl_context
from epp.metrics import MetricsPoller
from epp.metrics.sources import attribute_pollers
from epp.scheduling.scheduler import Scheduler
from epp.telemetry import Telemetry
from epp.telemetry.auth import KubeMetricsAuth
from epp.telemetry.http import MetricsServer

log = logging.getLogger("epp.serve")


def load_policy(args: argparse.Namespace, clock: Clock) -> tuple[EndpointPickerConfig, Scheduler]:
    """``--config-text``, else ``--config-file`` (a path or preset name), else the default preset."""
    if args.config_text:
        config = parse_config_text(args.config_text)
        return config, build_scheduler(config, clock=clock)
    return load_config_and_scheduler(args.config_file or DEFAULT_POLICY, clock=clock)


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
        self.telemetry.instrument(self.scheduler)  # plugin_duration_seconds, prefix_indexer_*
        self.source = select_source(args, config, self.datastore, self.telemetry.registry)
        native = args.grpc_server == "native"
        credentials: grpc.ServerCredentials | ssl.SSLContext | None = None
        if args.secure_serving:
            tls = server_ssl_context if native else server_credentials
            credentials = tls(args.cert_path or None, args.enable_cert_reload)
        self.director = Director(
            self.datastore, self.scheduler, self.telemetry, saturation=self.scheduler.saturation_detector,
            subset_filter=not args.disable_endpoint_subset_filter, objective_priority=self.source.objective_priority,
            model_rewriter=self.source.model_rewriter, fallbacks=args.fallback_endpoints,
        )
        election = args.ha_enable_leader_election and self.source.name == "kubernetes"
        health = HealthService(readiness=self.source.ready, leader_election=election)
        self.poller = MetricsPoller(self.datastore, interval=args.refresh_metrics_interval,
                                    registry=self.telemetry.registry)
        self.attribute_pollers = attribute_pollers(config, self.scheduler.plugins, self.datastore,
                                                   args.refresh_metrics_interval)  # DCGM, /v1/models
        self.limiter = StreamLimiter(args.max_concurrent_streams, args.max_body_bytes, registry=self.telemetry.registry)
        self.server = PickerServer(
            ExtProcServicer(self.director, args.max_body_bytes, self.limiter), health,
            port=args.grpc_port, health_port=args.grpc_health_port, host=args.bind_address or "[::]",
            credentials=credentials, max_message_bytes=args.max_body_bytes, health_on_main_port=args.health_checking,
            max_concurrent_rpcs=args.max_concurrent_streams * GRPC_BACKSTOP_FACTOR, native=native,
        )
        self.metrics_auth = KubeMetricsAuth(args.kubeconfig) if metrics_auth_enabled(args) else None
        self.metrics = MetricsServer(self.telemetry, args.metrics_port, host=args.bind_address or None,
                                     auth=self.metrics_auth)
        self.drain_timeout: float = args.drain_timeout
        self.shutdown_grace: float = args.shutdown_grace
        self._stack = contextlib.AsyncExitStack()

    async def setup(self, stack: contextlib.AsyncExitStack, shutdown: Shutdown) -> None:
        """Start every part into ``stack`` (which stops them in reverse); the serve loop's ``setup``."""
        await stack.enter_async_context(self.source.running)
        await stack.enter_async_context(self.poller)
        for poller in self.attribute_pollers:
            await stack.enter_async_context(poller)
        for plugin in self.scheduler.plugins:  # plugins with background work (precise-prefix-cache-producer)
            register, start, stop = (getattr(plugin, a, None) for a in ("register_metrics", "start", "stop"))
            if register is not None:
                register(self.telemetry.registry)
            if start is not None and stop is not None:
                await start()
                stack.push_async_callback(stop)
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
