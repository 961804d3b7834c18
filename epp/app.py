"""``epp serve``: flags (the reference picker's names and defaults) and the process around the picker.

``epp.service.PickerService`` builds and starts the parts; this module parses flags, sets up logging
and the event loop, tunes the garbage collector once everything is up, waits for SIGTERM/SIGINT and
maps failures to exit codes (2 bad configuration, 1 cannot serve).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import signal

from epp._util.duration import parse_duration
from epp._util.logs import add_logging_flags, configure_logging
from epp.discovery.kube_setup import add_kubernetes_flags
from epp.request.body import DEFAULT_MAX_BODY_BYTES

log = logging.getLogger("epp.serve")

DEFAULT_POLICY = "gie-default"  # the reference's built-in default: queue, kv-cache and prefix scorers
GC_GEN0_THRESHOLD = 50_000
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


def tune_gc() -> None:
    """Freeze start-up objects out of the collector's sight and collect young objects less often.

    Every ext_proc stream allocates a burst of short-lived protobuf wrappers, futures and tasks; at
    CPython's default gen-0 threshold (700) collections took ≈12 % of the picker's busy CPU, mostly
    re-scanning long-lived objects (modules, descriptors, the config). Cycles are still collected,
    in bigger batches (bench/RESULTS.md, "Cutting the picker's cost").
    """
    gc.collect()
    gc.freeze()
    _, gen1, gen2 = gc.get_threshold()
    gc.set_threshold(GC_GEN0_THRESHOLD, gen1, gen2)


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
    g.add_argument("--grpc-server", choices=("native", "grpcio"), default="native",
                   help="ext_proc transport: epp's own HTTP/2 server (several times less CPU per request) or grpc.aio")
    g.add_argument("--drain-timeout", type=duration, default="30s", metavar="DURATION",
                   help="on SIGTERM, how long in-flight streams may take to finish (Go duration, e.g. 30s)")
    p = parser.add_argument_group("pool without Kubernetes")
    p.add_argument("--static-endpoints", default="", metavar="HOST:PORT[,HOST:PORT...]",
                   help="fixed pool of model-server endpoints (hostnames are resolved once at start); "
                        "instead of --pool-name / --endpoint-selector")
    p.add_argument("--endpoints-file", default="", metavar="PATH",
                   help="llm-d endpoints file (YAML: endpoints: [{name, address, port, ...}]), like a "
                        "file-discovery plugin in the config; instead of the other sources")
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
    if args.max_body_bytes < 1 or args.max_concurrent_streams < 1:
        log.error("--max-body-bytes and --max-concurrent-streams must be positive")
        return 2
    try:
        import uvloop
    except ImportError:
        return asyncio.run(serve(args))
    return uvloop.run(serve(args))


async def serve(args: argparse.Namespace) -> int:
    """Build, start, wait for SIGTERM/SIGINT, stop. Exit 2 for bad configuration, 1 when serving fails."""
    from epp.service import PickerService

    try:
        picker = PickerService(args)
    except (ValueError, OSError) as exc:
        log.error("%s", exc)
        return 2
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        async with picker:
            tune_gc()
            await stop.wait()
            log.info("shutting down")
    except ValueError as exc:  # the endpoint source refused its input at start (bad file, unresolvable host)
        log.error("%s", exc)
        return 2
    except (OSError, RuntimeError) as exc:  # a port already in use (grpc raises RuntimeError)
        log.error("cannot serve: %s", exc)
        return 1
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
    log.info("stopped")
    return 0
