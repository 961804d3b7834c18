"""``epp serve``: composition root of the endpoint picker.

Builds datastore → telemetry → discovery (static list, or Kubernetes with optional leader election) →
scheduler (--config-file/--config-text, else the reference default) → director → metrics poller → servers, starts them in that order,
waits for SIGTERM/SIGINT, and stops them in reverse (health NOT_SERVING first, in-flight streams given
``--drain-timeout`` to finish). Flags mirror the reference picker's names and defaults.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal

from epp._util.duration import parse_duration
from epp._util.logs import add_logging_flags, configure_logging
from epp.discovery.kube_setup import add_kubernetes_flags
from epp.request.body import DEFAULT_MAX_BODY_BYTES

log = logging.getLogger("epp.serve")

DEFAULT_POLICY = "gie-default"  # the reference's built-in default: queue, kv-cache and prefix scorers
DEFAULT_MAX_STREAMS = 10_000


def go_bool(text: str) -> bool:
    """Go flag booleans: ``--flag``, ``--flag=true``, ``--flag=false`` (also 1/0, t/f)."""
    value = text.strip().lower()
    if value in ("1", "t", "true", "yes"):
        return True
    if value in ("0", "f", "false", "no"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def duration(text: str) -> float:
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def port(text: str) -> int:
    if not text.isdigit() or int(text) > 65535:
        raise argparse.ArgumentTypeError(f"invalid port {text!r}")
    return int(text)


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.ArgumentDefaultsHelpFormatter
    parser.description = (
        "Run the endpoint picker: an Envoy ext_proc gRPC server that tells the gateway which model-server "
        "endpoint serves each request (header x-gateway-destination-endpoint + envoy.lb metadata)."
    )
    g = parser.add_argument_group("serving")
    g.add_argument("--grpc-port", type=port, default=9002, help="ext_proc gRPC port")
    g.add_argument("--grpc-health-port", type=port, default=9003, help="gRPC health port (plaintext)")
    g.add_argument("--metrics-port", type=port, default=9090, help="Prometheus /metrics port")
    g.add_argument("--bind-address", default="", help="address to listen on; empty = all interfaces")
    g.add_argument("--secure-serving", type=go_bool, nargs="?", const=True, default=True, metavar="BOOL",
                   help="serve ext_proc over TLS (--secure-serving=false for plaintext)")
    g.add_argument("--cert-path", default="",
                   help="directory with tls.crt and tls.key; empty = generate a self-signed ECDSA certificate")
    g.add_argument("--enable-cert-reload", type=go_bool, nargs="?", const=True, default=False, metavar="BOOL",
                   help="reload tls.crt/tls.key from --cert-path when they change")
    g.add_argument("--health-checking", type=go_bool, nargs="?", const=True, default=False, metavar="BOOL",
                   help="also serve the gRPC health service on --grpc-port")
    g.add_argument("--drain-timeout", type=duration, default="30s", metavar="DURATION",
                   help="on SIGTERM, how long in-flight streams may take to finish (Go duration, e.g. 30s)")
    p = parser.add_argument_group("pool without Kubernetes")
    p.add_argument("--static-endpoints", default="", metavar="HOST:PORT[,HOST:PORT...]",
                   help="fixed pool of model-server endpoints (hostnames are resolved once at start); "
                        "instead of --pool-name / --endpoint-selector")
    p.add_argument("--endpoints-file", default="", metavar="PATH",
                   help="YAML endpoints file (llm-d file-discovery format); instead of the other pool sources")
    p.add_argument("--watch-endpoints-file", type=go_bool, nargs="?", const=True, default=True, metavar="BOOL",
                   help="re-read --endpoints-file when it changes (a bad edit keeps the previous pool)")
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
    r.add_argument("--disable-endpoint-subset-filter", type=go_bool, nargs="?", const=True, default=False,
                   metavar="BOOL", help="ignore the gateway's envoy.lb.subset_hint endpoint subset")
    r.add_argument("--max-body-bytes", type=int, default=DEFAULT_MAX_BODY_BYTES,
                   help="largest request body accepted; larger bodies get 413")
    r.add_argument("--max-concurrent-streams", type=int, default=DEFAULT_MAX_STREAMS,
                   help="most requests in flight through epp; more get an immediate 503 (memory stays bounded)")
    add_logging_flags(parser)
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
    try:
        import uvloop
    except ImportError:
        return asyncio.run(serve(args))
    return uvloop.run(serve(args))


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
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        async with contextlib.AsyncExitStack() as stack:
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
            stack.push_async_callback(server.stop, args.drain_timeout)
            log.info("epp ready: ext_proc :%d, health :%d, metrics :%d", server.port, server.health_port, metrics.port)
            await stop.wait()
            log.info("shutting down")
    except (OSError, RuntimeError) as exc:  # a port already in use (grpc raises RuntimeError)
        log.error("cannot serve: %s", exc)
        return 1
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
    log.info("stopped")
    return 0
