"""The body-based router in a local gateway: its place in an Envoy bootstrap, and ``epp bbr`` as a child.

``with_body_router`` takes a rendered bootstrap (``config.render``) and does what the Istio EnvoyFilter in
``manifests/overlays/istio`` does in a cluster: the router's ext_proc filter goes first in the HTTP filter
chain (request body BUFFERED, no response phase, fail closed), and the routes are replaced by one route per
``ModelRoute``, matching the headers the router sets — so which upstream serves a request is decided by
route matching on those headers, exactly as HTTPRoutes do. A request matching no route gets Envoy's 404.
"""

from __future__ import annotations

import copy
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from epp.envoy.config import Upstream
from epp.envoy.picker import PickerProcess

ROUTER_CLUSTER = "bbr"
ROUTER_FILTER = "epp.bbr.ext_proc"
_API = "type.googleapis.com/envoy"


@dataclass(frozen=True, slots=True)
class ModelRoute:
    """Requests whose headers equal all of ``headers`` (exact, case-sensitive values) go to ``upstream``."""

    headers: Mapping[str, str]
    upstream: Upstream


def router_filter(message_timeout_s: float = 5.0, streaming: bool = False) -> dict[str, Any]:
    """The router's ext_proc filter: BUFFERED body (docs/deploy.md), or FULL_DUPLEX_STREAMED when ``streaming``."""
    mode = {
        "request_header_mode": "SEND",
        "request_body_mode": "FULL_DUPLEX_STREAMED" if streaming else "BUFFERED",
        # Envoy requires trailers with FULL_DUPLEX_STREAMED.
        "request_trailer_mode": "SEND" if streaming else "SKIP",
        "response_header_mode": "SKIP",
        "response_body_mode": "NONE",
        "response_trailer_mode": "SKIP",
    }
    return {
        "name": ROUTER_FILTER,
        "typed_config": {
            "@type": f"{_API}.extensions.filters.http.ext_proc.v3.ExternalProcessor",
            "grpc_service": {"envoy_grpc": {"cluster_name": ROUTER_CLUSTER}, "timeout": f"{message_timeout_s:.3f}s"},
            "failure_mode_allow": False,
            "message_timeout": f"{message_timeout_s:.3f}s",
            "processing_mode": mode,
        },
    }


def _cluster(name: str, upstream: Upstream, http2: bool = False) -> dict[str, Any]:
    cluster: dict[str, Any] = {
        "name": name,
        "type": "STATIC",
        "connect_timeout": "1s",
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [{"lb_endpoints": [{"endpoint": {"address": {
                "socket_address": {"address": upstream.host, "port_value": upstream.port},
            }}}]}],
        },
    }
    if http2:  # gRPC needs HTTP/2
        options = f"{_API}.extensions.upstreams.http.v3.HttpProtocolOptions"
        cluster["typed_extension_protocol_options"] = {
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": options, "explicit_http_config": {"http2_protocol_options": {}},
            },
        }
    return cluster


def with_body_router(
    bootstrap: Mapping[str, Any],
    router: Upstream,
    routes: Sequence[ModelRoute],
    *,
    streaming: bool = False,
    route_timeout_s: float = 300.0,
) -> dict[str, Any]:
    """A copy of ``bootstrap`` with the router first in its (single) listener and routes on its headers."""
    out = copy.deepcopy(dict(bootstrap))
    resources = out["static_resources"]
    (listener,) = resources["listeners"]
    manager = listener["filter_chains"][0]["filters"][0]["typed_config"]
    manager["http_filters"].insert(0, router_filter(streaming=streaming))
    (host,) = manager["route_config"]["virtual_hosts"]
    host["routes"] = []
    for index, route in enumerate(routes):
        name = f"model-route-{index}"
        resources["clusters"].append(_cluster(name, route.upstream))
        host["routes"].append({
            "match": {
                "prefix": "/",
                "headers": [{"name": h, "string_match": {"exact": v}} for h, v in route.headers.items()],
            },
            "route": {"cluster": name, "timeout": f"{route_timeout_s:.3f}s"},
        })
    resources["clusters"].append(_cluster(ROUTER_CLUSTER, router, http2=True))
    return out


class RouterProcess(PickerProcess):
    """One ``epp bbr`` child on free 127.0.0.1 ports (plaintext); ``start`` blocks until its health is SERVING."""

    name = "epp bbr"

    def __init__(self, *, extra_args: Sequence[str] = (), log_path: Path | None = None, host: str = "127.0.0.1") -> None:
        super().__init__((), extra_args=extra_args, log_path=log_path, host=host)

    def command(self) -> list[str]:
        return [
            sys.executable, "-m", "epp", "bbr",
            f"--grpc-port={self.grpc_port}", f"--grpc-health-port={self.health_port}", f"--bind-address={self.host}",
            *self.extra_args,
        ]  # fmt: skip
