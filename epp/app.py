"""``epp serve``: flags (the reference picker's names and defaults) and the process around the picker.

This module defines the flags and turns them, once, into a frozen ``epp.serve_config.ServeConfig``;
``epp.service.serve`` builds and starts the parts from it and runs them until SIGTERM/SIGINT through
``epp._util.cli.run_until_signal`` (health NOT_SERVING first, new streams still served for
``--drain-timeout``, then open streams get ``--shutdown-grace``); ``epp.workers.supervise`` runs
``--workers N`` of them.
"""

from __future__ import annotations

import argparse
import logging
from types import MappingProxyType
from typing import Final

from epp._util.cli import add_serving_flags, bool_flag, duration, go_bool, port, run_async
from epp._util.logs import configure_logging, log_settings
from epp.request.body import DEFAULT_MAX_BODY_BYTES
from epp.serve_config import DEFAULT_MAX_STREAMS, DEFAULT_POLICY, ServeConfig, prepare_grpc_tls
from epp.serve_flags import add_kubernetes_flags, add_upstream_flags, message_size
from epp.shared.serve import add_shared_state_flags

log = logging.getLogger("epp.serve")


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Run the endpoint picker: an Envoy ext_proc gRPC server that tells the gateway which model-server "
        "endpoint serves each request (header x-gateway-destination-endpoint + envoy.lb metadata)."
    )
    g = add_serving_flags(parser, grpc_port=9002, health_port=9003, secure=True, drain="30s",
                          max_body_bytes=DEFAULT_MAX_BODY_BYTES)
    g.add_argument("--metrics-port", type=port, default=9090, help="Prometheus /metrics port")
    g.add_argument("--metrics-endpoint-auth", type=auto_bool, nargs="?", const=True, default="auto",
                   metavar="BOOL|auto",
                   help="Kubernetes token auth on /metrics: a scraper's bearer token must pass a TokenReview and a "
                        "SubjectAccessReview for GET /metrics (401 / 403 otherwise). auto = true with Kubernetes "
                        "discovery (--pool-name, --endpoint-selector), false without (no kube-apiserver to ask); "
                        "true without discovery uses --kubeconfig / in-cluster config and fails at start if "
                        "there is none")
    bool_flag(g, "--health-checking", False, "also serve the gRPC health service on --grpc-port")
    g.add_argument("--workers", type=positive_int, default=1, metavar="N",
                   help="picker processes sharing --grpc-port (SO_REUSEPORT), one per core the pod has; each is a "
                        "replica with its own state (README 'Several cores and replicas'); health and metrics ports serve "
                        "their aggregate")
    g.add_argument("--grpc-server", choices=("grpcio", "native"), default="native",
                   help="ext_proc transport: epp's own HTTP/2 gRPC server (native, 2-3x less CPU per request, "
                        "abuse-tested: docs/hardening.md), or grpc.aio (grpcio); README 'Transport'")
    p = parser.add_argument_group("pool without Kubernetes")
    p.add_argument("--static-endpoints", default="", metavar="HOST:PORT[@EVENTS_PORT][,...]",
                   help="fixed pool of model-server endpoints (hostnames are resolved once at start); "
                        "instead of --pool-name / --endpoint-selector. @EVENTS_PORT: where that engine "
                        "publishes KV events (several engines on one host)")
    p.add_argument("--endpoints-file", default="", metavar="PATH",
                   help="llm-d endpoints file (YAML: endpoints: [{name, address, port, ...}]), like a "
                        "file-discovery plugin in the config; instead of the other sources")
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
    add_endpoint_health_flags(parser)
    add_reference_compat_flags(parser)
    add_upstream_flags(parser)
    add_shared_state_flags(parser)
    parser.set_defaults(run=run)


def add_endpoint_health_flags(parser: argparse.ArgumentParser) -> None:
    """Passive health / outlier detection (``epp.datastore.health``) and the fallback list."""
    h = parser.add_argument_group("endpoint health (passive outlier detection; docs/health.md)")
    bool_flag(h, "--endpoint-health", True,
              "eject endpoints that fail requests (5xx, connect failure, reset) or whose /metrics is refused or hangs")
    h.add_argument("--endpoint-health-consecutive-failures", type=int, default=3, metavar="N",
                   help="endpoint faults in a row that eject an endpoint")
    h.add_argument("--endpoint-health-base-ejection-time", type=duration, default="1s", metavar="DURATION",
                   help="first ejection's length; doubles with each ejection in a row")
    h.add_argument("--endpoint-health-max-ejection-time", type=duration, default="30s", metavar="DURATION",
                   help="longest ejection (and how long an endpoint must stay healthy to start over)")
    h.add_argument("--endpoint-health-scrape-failure-window", type=duration, default="2s", metavar="DURATION",
                   help="/metrics refused or timing out for this long ejects an endpoint")
    h.add_argument("--endpoint-health-max-ejection-percent", type=float, default=50.0, metavar="PERCENT",
                   help="panic threshold: most endpoints ejected at once (always one of two or more, never the last)")
    h.add_argument("--fallback-endpoints", type=int, default=0, metavar="N",
                   help="add N next-best healthy endpoints to x-gateway-destination-endpoint (comma list) for a "
                        "gateway that retries down the list (Envoy override_host + retry policy); keep 0 for "
                        "ORIGINAL_DST gateways, which accept a single address only")


# Reference-picker flags epp accepts so existing manifests start unchanged, but whose feature it does not
# have: flag → the value that needs no feature (setting anything else logs one warning at start).
UNSUPPORTED_FLAGS: Final = MappingProxyType({
    "tracing": False, "enable_pprof": False,
})


def auto_bool(text: str) -> bool | None:
    """A Go-style boolean, or ``auto`` (None): the flag's value follows from the other flags."""
    return None if text.strip().lower() == "auto" else go_bool(text)


def add_reference_compat_flags(parser: argparse.ArgumentParser) -> None:
    """Accept the reference's remaining flags: a drop-in must not exit on a chart's standard args."""
    g = parser.add_argument_group("reference compatibility (accepted; see each flag)")
    bool_flag(g, "--tracing", False, "OpenTelemetry tracing: not supported, warns when true (use request ids in logs)")
    bool_flag(g, "--enable-pprof", False, "Go pprof endpoints: not applicable to epp, warns when true")
    g.add_argument("--refresh-prometheus-metrics-interval", type=duration, default="5s", metavar="DURATION",
                   help="accepted for compatibility: epp computes pool gauges when /metrics is scraped")
    g.add_argument("--grpc-max-recv-msg-size", type=message_size, default=0, metavar="SIZE",
                   help="largest ext_proc gRPC message received (10MiB, 25MB, bytes); 0 = --max-body-bytes + framing")
    g.add_argument("--grpc-max-send-msg-size", type=message_size, default=0, metavar="SIZE",
                   help="largest ext_proc gRPC message sent; 0 = --max-body-bytes + framing")


def warn_unsupported(args: argparse.Namespace) -> list[str]:
    """Log one warning per reference flag set to a feature epp lacks; returns their names."""
    named = [name for name, inert in UNSUPPORTED_FLAGS.items() if getattr(args, name) != inert]
    for name in named:
        log.warning("--%s is not supported by epp and is ignored", name.replace("_", "-"))
    return named


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def run(args: argparse.Namespace) -> int:
    """``epp serve``: the flags become one ``ServeConfig`` here (a bad flag exits 2 before anything
    starts), then one picker serves, or ``--workers N`` of them under a supervisor."""
    configure_logging(log_settings(args))
    warn_unsupported(args)
    try:
        config = ServeConfig.from_args(args)
        prepare_grpc_tls(config.serving)
    except ValueError as exc:
        log.error("%s", exc)
        return 2
    if config.serving.workers > 1:
        from epp.workers import supervise

        return run_async(supervise(config))
    from epp.service import serve

    return run_async(serve(config))
