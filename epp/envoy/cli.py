"""``epp envoy-config``: the Envoy bootstrap for a picker run outside Kubernetes.

``epp serve --static-endpoints A,B`` needs a gateway in front of it; this prints one that works with the
same endpoint list, rendered by ``epp.envoy.config`` (the renderer the demo and the end-to-end tests run
against a real Envoy), so a hand-written config cannot miss ``receiving_namespaces``, the HTTP/2 picker
cluster or the header that strips a client-chosen destination.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

from epp._util.cli import bool_flag, duration, port
from epp.discovery.static import parse_static_endpoints, resolve_host
from epp.envoy.config import BodyMode, EnvoyConfig, Routing, Upstream, to_yaml

EPILOG = """\
example (the picker and Envoy on one host, two engines):
  epp serve --static-endpoints 10.0.0.5:8000,10.0.0.6:8000 &
  epp envoy-config --static-endpoints 10.0.0.5:8000,10.0.0.6:8000 > envoy.yaml
  envoy -c envoy.yaml          # then: curl localhost:8080/v1/completions -d '{"model": ...}'
"""


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.description = __doc__
    parser.epilog = EPILOG
    parser.add_argument("--static-endpoints", required=True, metavar="HOST:PORT[,HOST:PORT...]",
                        help="the model servers, as given to `epp serve --static-endpoints` (names are resolved now: "
                             "Envoy's pool needs IP addresses)")
    parser.add_argument("--picker", default="127.0.0.1:9002", metavar="HOST:PORT",
                        help="where `epp serve` listens (its --grpc-port)")
    bool_flag(parser, "--picker-tls", True,
              "talk TLS to the picker, accepting its self-signed certificate (false for `epp serve "
              "--secure-serving=false`)")
    parser.add_argument("--listen-address", default="0.0.0.0", help="address Envoy serves clients on")
    parser.add_argument("--listen-port", type=port, default=8080, help="port Envoy serves clients on")
    parser.add_argument("--admin-port", type=port, default=9901, help="Envoy's admin port (on 127.0.0.1)")
    parser.add_argument("--routing", choices=[r.value for r in Routing], default=Routing.OVERRIDE_HOST.value,
                        help="override-host: a static pool where Envoy walks epp's fallback list and can fail open; "
                             "original-dst: GIE's default, connects to the single address epp names")
    bool_flag(parser, "--failure-mode-allow", False,
              "when the picker is unreachable, route round-robin instead of answering 500 (needs override-host; "
              "request bodies are then BUFFERED, the mode where Envoy 1.40 can fail open)")
    parser.add_argument("--route-timeout", type=duration, default="300s", metavar="DURATION",
                        help="longest upstream response (0 = none, for very long generations)")
    parser.add_argument("--access-log", default="/dev/stdout", metavar="PATH",
                        help="JSON access log: request id, chosen and served endpoint, status per line")
    parser.add_argument("-o", "--output", type=Path, default=None, metavar="FILE", help="write here instead of stdout")
    parser.set_defaults(run=run)


def _endpoint(spec: str) -> Upstream:
    ((host, port_number),) = parse_static_endpoints(spec)
    return Upstream(asyncio.run(resolve_host(host)), port_number)


def config_from_args(args: argparse.Namespace) -> EnvoyConfig:
    """The ``EnvoyConfig`` the flags describe; ``ValueError`` names the bad flag value."""
    pool = tuple(dict.fromkeys(_endpoint(f"{h}:{p}") for h, p in parse_static_endpoints(args.static_endpoints)))
    try:
        picker = _endpoint(args.picker)
    except ValueError as exc:
        raise ValueError(f"--picker: {exc}".replace("static endpoint ", "")) from None
    routing = Routing(args.routing)
    if args.failure_mode_allow and routing is not Routing.OVERRIDE_HOST:
        raise ValueError("--failure-mode-allow needs --routing override-host (ORIGINAL_DST has no fallback host)")
    # Envoy 1.40 fails open in FULL_DUPLEX_STREAMED only before the first body chunk went out; BUFFERED
    # request bodies make fail-open real (README, "How it wires into Envoy").
    body = BodyMode.BUFFERED if args.failure_mode_allow else BodyMode.FULL_DUPLEX_STREAMED
    return EnvoyConfig(
        request_body_mode=body, listen_port=args.listen_port, admin_port=args.admin_port, picker=picker, access_log_path=args.access_log,
        picker_tls=args.picker_tls, routing=routing, pool=pool, failure_mode_allow=args.failure_mode_allow,
        route_timeout_s=args.route_timeout, listen_address=args.listen_address,
    )


def run(args: argparse.Namespace) -> int:
    try:
        text = to_yaml(config_from_args(args))
    except ValueError as exc:
        print(f"epp envoy-config: {exc}", file=sys.stderr)
        return 2
    header = "# Envoy bootstrap for epp, rendered by `epp envoy-config` (check: envoy --mode validate -c FILE)\n"
    if args.output is None:
        sys.stdout.write(header + text)
    else:
        args.output.write_text(header + text)
        print(f"wrote {args.output}", file=sys.stderr)
    return 0
