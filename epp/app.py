"""``epp serve``: composition root of the endpoint picker.

Builds datastore → telemetry → discovery (static list, or Kubernetes with optional leader election) →
scheduler (--config-file/--config-text, else the reference default) → director → metrics poller → servers, starts them in that order,
waits for SIGTERM/SIGINT, and stops them in reverse (health NOT_SERVING first, new streams still served
for ``--drain-timeout``, then open streams get ``--shutdown-grace``). Flags mirror the reference picker's
names and defaults.
"""

from __future__ import annotations

import argparse
import contextlib
import logging

from epp._util.cli import Shutdown, add_serving_flags, bool_flag, duration, port, run_async, run_until_signal
from epp._util.logs import configure_logging
from epp.discovery.kube_setup import add_kubernetes_flags

log = logging.getLogger("epp.serve")

DEFAULT_POLICY = "gie-default"  # the reference's built-in default: queue, kv-cache and prefix scorers
DEFAULT_MAX_STREAMS = 10_000


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.ArgumentDefaultsHelpFormatter
    parser.description = (
        "Run the endpoint picker: an Envoy ext_proc gRPC server that tells the gateway which model-server "
        "endpoint serves each request (header x-gateway-destination-endpoint + envoy.lb metadata)."
    )
    g = add_serving_flags(parser, grpc_port=9002, health_port=9003, secure=True, drain="30s")
    g.add_argument("--metrics-port", type=port, default=9090, help="Prometheus /metrics port")
    bool_flag(g, "--health-checking", False, "also serve the gRPC health service on --grpc-port")
    p = parser.add_argument_group("pool without Kubernetes")
    p.add_argument("--static-endpoints", default="", metavar="HOST:PORT[,HOST:PORT...]",
                   help="fixed pool of model-server endpoints (hostnames are resolved once at start); "
                        "instead of --pool-name / --endpoint-selector")
    p.add_argument("--endpoints-file", default="", metavar="PATH",
                   help="YAML endpoints file (llm-d file-discovery format); instead of the other pool sources")
    bool_flag(p, "--watch-endpoints-file", True, "re-read --endpoints-file when it changes (a bad edit keeps the previous pool)")
    add_kubernetes_flags(parser)
    m = parser.add_argument_group("engine metrics")
    m.add_argument("--refresh-metrics-interval", type=duration, default="50ms", metavar="DURATION",
                   help="how often each endpoint's /metrics is scraped (Go duration)")
    m.add_argument("--metrics-staleness-threshold", type=duration, default="2s", metavar="DURATION",
                   help="engine metrics older than this are stale (Go duration)")
    c = parser.add_argument_group("scheduling")
    source = c.add_mutually_exclusive_group()
    source.add_argument("--config-file", default="", metavar="PATH|PRESET",
                        help=f"EndpointPickerConfig YAML file, or a preset name; default: preset {DEFAULT_POLICY}")
    source.add_argument("--config-text", default="", metavar="YAML", help="EndpointPickerConfig YAML given inline")
    r = parser.add_argument_group("requests")
    bool_flag(r, "--disable-endpoint-subset-filter", False, "ignore the gateway's envoy.lb.subset_hint endpoint subset")
    r.add_argument("--max-concurrent-streams", type=int, default=DEFAULT_MAX_STREAMS,
                   help="most requests in flight through epp; more get an immediate 503 (memory stays bounded)")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    configure_logging(args.log_format, args.verbosity)
    kube = bool(args.pool_name or args.endpoint_selector)
    if kube + bool(args.static_endpoints) + bool(args.endpoints_file) != 1:
        log.error("no endpoint source: pass exactly one of --pool-name, --endpoint-selector, --static-endpoints "
                  "or --endpoints-file")
        return 2
    if args.max_body_bytes < 1 or args.max_concurrent_streams < 1:
        log.error("--max-body-bytes and --max-concurrent-streams must be positive")
        return 2
    return run_async(serve(args))


async def serve(args: argparse.Namespace) -> int:
    from epp import __version__
    from epp.datastore import Datastore
    from epp.director import Director
    from epp.config import load_scheduler, load_scheduler_text
    from epp.discovery import FileDiscovery
    from epp.discovery.kube_setup import build_from_args
    from epp.discovery.static import StaticDiscovery
    from epp.extproc.health import HealthService
    from epp.extproc.limits import GRPC_BACKSTOP_FACTOR, StreamLimiter
    from epp.extproc.server import PickerServer
    from epp.extproc.servicer import ExtProcServicer
    from epp.extproc.tls import server_credentials
    from epp.metrics import MetricsPoller
    from epp.telemetry import Telemetry
    from epp.telemetry.http import MetricsServer

    datastore = Datastore(staleness_threshold=args.metrics_staleness_threshold)
    telemetry = Telemetry(datastore, pool_name=args.pool_name, build_ref=__version__)
    try:
        kube = build_from_args(args, datastore, registry=telemetry.registry)
        endpoints_file = None
        if args.endpoints_file:
            endpoints_file = FileDiscovery(args.endpoints_file, datastore, reload=args.watch_endpoints_file)
            await endpoints_file.start()
        elif kube is None:
            endpoints = await StaticDiscovery(args.static_endpoints).start(datastore)
            log.info("static pool: %s", ", ".join(e.hostport for e in endpoints))
        credentials = (
            server_credentials(args.cert_path or None, args.enable_cert_reload) if args.secure_serving else None
        )
        if args.config_text:
            scheduler = load_scheduler_text(args.config_text, clock=datastore.clock)
        else:
            scheduler = load_scheduler(args.config_file or DEFAULT_POLICY, clock=datastore.clock)
    except (ValueError, OSError) as exc:
        log.error("%s", exc)
        return 2
    director = Director(
        datastore, scheduler, telemetry, saturation=scheduler.saturation_detector,
        subset_filter=not args.disable_endpoint_subset_filter,
        objective_priority=kube.objective_priority if kube is not None else None,
    )
    if kube is not None:
        health = HealthService(readiness=lambda: kube.ready, leader_election=args.ha_enable_leader_election)
    else:
        health = HealthService(readiness=lambda: datastore.synced)
    poller = MetricsPoller(datastore, interval=args.refresh_metrics_interval, registry=telemetry.registry)
    host = args.bind_address or "[::]"
    limiter = StreamLimiter(args.max_concurrent_streams, args.max_body_bytes, registry=telemetry.registry)
    server = PickerServer(
        ExtProcServicer(director, args.max_body_bytes, limiter), health,
        port=args.grpc_port, health_port=args.grpc_health_port, host=host, credentials=credentials,
        max_message_bytes=args.max_body_bytes, health_on_main_port=args.health_checking,
        max_concurrent_rpcs=args.max_concurrent_streams * GRPC_BACKSTOP_FACTOR,
    )
    metrics = MetricsServer(telemetry, args.metrics_port, host=args.bind_address or None)

    async def setup(stack: contextlib.AsyncExitStack, shutdown: Shutdown) -> None:
        if kube is not None:
            await stack.enter_async_context(kube)
        if endpoints_file is not None:
            stack.push_async_callback(endpoints_file.stop)
        await stack.enter_async_context(poller)
        scheduler.attach(datastore)  # prefix indexes and KV-event subscribers follow membership
        for plugin in scheduler.plugins:  # plugins with background work (precise-prefix-cache-producer)
            register, start, stop_plugin = (getattr(plugin, a, None) for a in ("register_metrics", "start", "stop"))
            if register is not None:
                register(telemetry.registry)
            if start is not None and stop_plugin is not None:
                await start()
                stack.push_async_callback(stop_plugin)
        await metrics.start()
        stack.push_async_callback(metrics.stop)
        await server.start()
        stack.push_async_callback(server.stop, args.shutdown_grace, args.drain_timeout, shutdown.hurry)
        log.info("epp ready: ext_proc :%d, health :%d, metrics :%d", server.port, server.health_port, metrics.port)

    return await run_until_signal(setup, log)
