"""Render an Envoy bootstrap that puts epp in front of a pool of model servers.

The bootstrap mirrors the GIE reference gateway (one listener, the ext_proc filter calling the picker over
HTTP/2, routing on ``x-gateway-destination-endpoint``) and adds what the reference leaves to the platform:
a ``header_mutation`` filter that drops a client-sent destination header before ext_proc runs (otherwise a
client could choose its own upstream whenever epp does not overwrite the header, e.g. during fail-open),
an access log that records where each request went, and an admin port for readiness and stats.

Two routing flavours are supported (see ``Routing``); the facts behind every knob are in
``../shared/design/envoy-extproc.md`` (beside the repository).
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

import yaml

from epp.request.headers import DESTINATION_HEADER, SERVED_KEY, SUBSET_KEY, SUBSET_NAMESPACE
from epp.request.headers import LB_METADATA_NAMESPACE as LB_NAMESPACE

STAT_PREFIX = "ingress"
PICKER_CLUSTER = "epp"
POOL_CLUSTER = "pool"

# Fields of each JSON access-log line; ``epp.envoy.accesslog`` reads them back.
ACCESS_LOG_FIELDS: Mapping[str, str] = MappingProxyType({
    "request_id": "%REQ(X-REQUEST-ID)%",
    "method": "%REQ(:METHOD)%",
    "path": "%REQ(:PATH)%",
    "code": "%RESPONSE_CODE%",
    "flags": "%RESPONSE_FLAGS%",
    "details": "%RESPONSE_CODE_DETAILS%",
    "upstream": "%UPSTREAM_HOST%",
    "destination": f"%REQ({DESTINATION_HEADER.upper()})%",
    "metadata": f"%DYNAMIC_METADATA({LB_NAMESPACE}:{DESTINATION_HEADER})%",
    "attempts": "%UPSTREAM_REQUEST_ATTEMPT_COUNT%",
    "duration_ms": "%DURATION%",
    "bytes_received": "%BYTES_RECEIVED%",
    "bytes_sent": "%BYTES_SENT%",
})


class Routing(enum.Enum):
    """How Envoy turns epp's answer into an upstream connection.

    ``ORIGINAL_DST``: the GIE default; an ``ORIGINAL_DST`` cluster connects to the single ``IP:PORT`` in
    the destination header. Any reachable address works, no pool list is needed, but fail-open cannot
    help (no header → 503) and comma lists are not understood.
    ``OVERRIDE_HOST``: a static pool with the ``override_host`` load-balancing policy reading epp's
    metadata (then the header); comma lists are walked by retries, and when epp is down (fail-open) or
    names a non-member the round-robin fallback picks a member — a real fail-open. Only this flavour reports
    the endpoint that served each request back to epp (``envoy.lb`` / ``x-gateway-destination-endpoint-served``
    in the response phase, as the EPP protocol asks): ORIGINAL_DST makes no load-balancing choice to report.
    """

    ORIGINAL_DST = "original-dst"
    OVERRIDE_HOST = "override-host"


class BodyMode(enum.Enum):
    """ext_proc body modes epp supports. ``FULL_DUPLEX_STREAMED`` is the GIE reference mode."""

    NONE = "NONE"
    BUFFERED = "BUFFERED"
    FULL_DUPLEX_STREAMED = "FULL_DUPLEX_STREAMED"


@dataclass(frozen=True, slots=True)
class Upstream:
    """One ``IP:PORT`` Envoy connects to (IP literal: ORIGINAL_DST cannot resolve names)."""

    host: str
    port: int

    @property
    def hostport(self) -> str:
        return f"{self.host}:{self.port}"


FALLBACK_ENDPOINTS = 2
"""The shipped fail-over depth: Envoy retries this many times, down the list ``epp serve
--fallback-endpoints FALLBACK_ENDPOINTS`` appends (``epp.envoy.stack.with_failover``, ``epp envoy-config``)."""


@dataclass(frozen=True, slots=True)
class EnvoyConfig:
    """Everything that varies between deployments of the gateway in front of epp.

    Defaults reproduce the GIE reference processing mode (request headers, request body full duplex with
    trailers, response headers, response body full duplex), fail-closed. ``message_timeout_s`` bounds one
    ext_proc exchange; ``route_timeout_s`` bounds a whole upstream response (0 disables it, as long
    generations need). ``pool`` lists the members for ``Routing.OVERRIDE_HOST`` and is ignored otherwise.
    ``retries`` > 0 adds the fail-over ``retry_policy`` (on by default: with ``Routing.OVERRIDE_HOST``
    and ``epp serve --fallback-endpoints N`` it walks epp's list, ``retries=N`` being enough; with
    ORIGINAL_DST it retries the same address, harmless); 0 configures no retries.
    ``picker=None`` leaves ext_proc out entirely: the baseline gateway benchmarks compare against, where
    the client chooses the destination itself (so nothing strips its header). ``subset_hint`` makes the
    gateway send every request with the GIE subset hint (``envoy.lb.subset_hint`` metadata listing the
    ``IP[:PORT]`` values epp may pick from), as a gateway that narrows a pool per route would.
    ``pool_http2`` speaks HTTP/2 to the model servers, as an InferencePool with ``appProtocol: h2c`` does
    (gRPC model servers such as vLLM's gRPC API).

    ``picker_replicas`` adds further picker replicas to the ext_proc cluster (each stream stays on the
    replica it opened on; new streams go round robin). With replicas, Envoy health-checks every picker over
    gRPC on its ext_proc port (``grpc.health.v1``, service ``envoy.service.ext_proc.v3.ExternalProcessor``:
    run ``epp serve --health-checking``), ejects one after a single connect failure, and retries opening a
    stream on another replica, so a replica that dies costs only the streams it held.
    """

    listen_port: int
    admin_port: int
    picker: Upstream | None
    access_log_path: str
    picker_tls: bool = False
    picker_sni: str = "epp"
    routing: Routing = Routing.ORIGINAL_DST
    pool: tuple[Upstream, ...] = ()
    request_body_mode: BodyMode = BodyMode.FULL_DUPLEX_STREAMED
    response_headers: bool = True
    response_body_mode: BodyMode = BodyMode.FULL_DUPLEX_STREAMED
    failure_mode_allow: bool = False
    message_timeout_s: float = 30.0
    grpc_timeout_s: float = 10.0
    route_timeout_s: float = 300.0
    retries: int = FALLBACK_ENDPOINTS
    connect_timeout_s: float = 1.0
    strip_client_destination: bool = True
    subset_hint: tuple[str, ...] | None = None
    listen_address: str = "127.0.0.1"
    pool_http2: bool = False
    picker_replicas: tuple[Upstream, ...] = ()
    picker_health_interval_s: float = 1.0

    @property
    def pickers(self) -> tuple[Upstream, ...]:
        return () if self.picker is None else (self.picker, *self.picker_replicas)

    def __post_init__(self) -> None:
        if self.routing is Routing.OVERRIDE_HOST and not self.pool:
            raise ValueError("override-host routing needs at least one pool member")
        if self.response_body_mode is not BodyMode.NONE and not self.response_headers:
            raise ValueError("a response body mode needs response headers sent to epp")
        if self.picker is None and self.strip_client_destination:
            raise ValueError("without a picker the client must set the destination: strip_client_destination=False")
        if self.picker is None and self.picker_replicas:
            raise ValueError("picker replicas need a first picker")


def _duration(seconds: float) -> str:
    return f"{seconds:.3f}s"


def _address(host: str, port: int) -> dict[str, Any]:
    return {"socket_address": {"address": host, "port_value": port}}


def _typed(type_name: str, **fields: Any) -> dict[str, Any]:
    return {"@type": f"type.googleapis.com/{type_name}", **fields}


def _processing_mode(cfg: EnvoyConfig) -> dict[str, str]:
    mode = {
        "request_header_mode": "SEND",
        "request_body_mode": cfg.request_body_mode.value,
        "request_trailer_mode": "SKIP",
        "response_header_mode": "SEND" if cfg.response_headers else "SKIP",
        "response_body_mode": cfg.response_body_mode.value,
        "response_trailer_mode": "SKIP",
    }
    # Envoy rejects FULL_DUPLEX_STREAMED unless trailers of the same direction are sent too.
    if cfg.request_body_mode is BodyMode.FULL_DUPLEX_STREAMED:
        mode["request_trailer_mode"] = "SEND"
    if cfg.response_body_mode is BodyMode.FULL_DUPLEX_STREAMED:
        mode["response_trailer_mode"] = "SEND"
    return mode


def _ext_proc_filter(cfg: EnvoyConfig) -> dict[str, Any]:
    return {
        "name": "envoy.filters.http.ext_proc",
        "typed_config": _typed(
            "envoy.extensions.filters.http.ext_proc.v3.ExternalProcessor",
            grpc_service={
                "envoy_grpc": {"cluster_name": PICKER_CLUSTER} | _stream_retry(cfg),
                "timeout": _duration(cfg.grpc_timeout_s),
            },
            failure_mode_allow=cfg.failure_mode_allow,
            message_timeout=_duration(cfg.message_timeout_s),
            processing_mode=_processing_mode(cfg),
            metadata_options=_metadata_options(cfg),
        ),
    }


def _stream_retry(cfg: EnvoyConfig) -> dict[str, Any]:
    """With several pickers, a stream that cannot open on one (it just died) opens on another."""
    if not cfg.picker_replicas:
        return {}
    return {"retry_policy": {"retry_on": "connect-failure,refused-stream,unavailable,reset", "num_retries": 2}}


def _picker_health(cfg: EnvoyConfig) -> dict[str, Any]:
    """Active gRPC health checks and one-failure ejection for a cluster of several pickers."""
    if not cfg.picker_replicas:
        return {}
    interval = _duration(cfg.picker_health_interval_s)
    return {
        "health_checks": [{
            "timeout": _duration(min(1.0, cfg.picker_health_interval_s)),
            "interval": interval,
            "no_traffic_interval": interval,  # Envoy's default (60 s) would leave a dead idle replica listed
            "unhealthy_threshold": 1,
            "healthy_threshold": 2,
            "grpc_health_check": {"service_name": "envoy.service.ext_proc.v3.ExternalProcessor"},
        }],
        # A refused connection ejects the replica at once, before the next health check notices.
        "outlier_detection": {
            "split_external_local_origin_errors": True,
            "consecutive_local_origin_failure": 1,
            "enforcing_consecutive_local_origin_failure": 100,
            "base_ejection_time": "10s",
            "max_ejection_percent": 100,
        },
        "common_lb_config": {"healthy_panic_threshold": {"value": 0}},  # never send to a replica known dead
    }


def _metadata_options(cfg: EnvoyConfig) -> dict[str, Any]:
    # Without receiving_namespaces Envoy silently drops epp's envoy.lb metadata.
    options: dict[str, Any] = {"receiving_namespaces": {"untyped": [LB_NAMESPACE]}}
    forwarded = []
    if cfg.subset_hint is not None:
        forwarded.append(SUBSET_NAMESPACE)
    if cfg.routing is Routing.OVERRIDE_HOST:
        # envoy.lb carries the served endpoint (selected_host_key below) to epp's response phase.
        forwarded.append(LB_NAMESPACE)
    if forwarded:
        options["forwarding_namespaces"] = {"untyped": forwarded}
    return options


def _subset_filter(hint: tuple[str, ...]) -> dict[str, Any]:
    return {
        "name": "envoy.filters.http.set_metadata",
        "typed_config": _typed(
            "envoy.extensions.filters.http.set_metadata.v3.Config",
            metadata=[{"metadata_namespace": SUBSET_NAMESPACE, "value": {SUBSET_KEY: list(hint)}}],
        ),
    }


def _http_filters(cfg: EnvoyConfig) -> list[dict[str, Any]]:
    filters: list[dict[str, Any]] = []
    if cfg.strip_client_destination:
        filters.append(
            {
                "name": "envoy.filters.http.header_mutation",
                "typed_config": _typed(
                    "envoy.extensions.filters.http.header_mutation.v3.HeaderMutation",
                    mutations={"request_mutations": [{"remove": DESTINATION_HEADER}]},
                ),
            }
        )
    if cfg.subset_hint is not None:
        filters.append(_subset_filter(cfg.subset_hint))
    if cfg.picker is not None:
        filters.append(_ext_proc_filter(cfg))
    filters.append(
        {
            "name": "envoy.filters.http.router",
            "typed_config": _typed("envoy.extensions.filters.http.router.v3.Router"),
        }
    )
    return filters


# Envoy's default cluster circuit breaker allows 3 retries in flight at once: with a dead primary, more
# concurrent requests than that fail with UO (retry overflow) instead of going down epp's fallback list.
MAX_CONCURRENT_RETRIES = 1024


def retry_policy(retries: int) -> dict[str, Any]:
    """The fail-over policy: retry a connect failure, a reset before the response started, or a 503
    (Envoy's own, or an engine's) up to ``retries`` times. With override_host each retry takes the next
    host of epp's ``x-gateway-destination-endpoint`` list (``epp serve --fallback-endpoints``), then the
    fallback policy; with ORIGINAL_DST it can only retry the same address."""
    return {
        "retry_on": "connect-failure,reset,retriable-status-codes",
        "retriable_status_codes": [503],
        "num_retries": retries,
    }


def _route(cfg: EnvoyConfig) -> dict[str, Any]:
    action: dict[str, Any] = {"cluster": POOL_CLUSTER, "timeout": _duration(cfg.route_timeout_s)}
    if cfg.retries > 0:
        action["retry_policy"] = retry_policy(cfg.retries)
    return {"match": {"prefix": "/"}, "route": action}


def _listener(cfg: EnvoyConfig) -> dict[str, Any]:
    access_log = {
        "name": "envoy.access_loggers.file",
        "typed_config": _typed(
            "envoy.extensions.access_loggers.file.v3.FileAccessLog",
            path=cfg.access_log_path,
            log_format={"json_format": dict(ACCESS_LOG_FIELDS)},
        ),
    }
    manager = _typed(
        "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
        stat_prefix=STAT_PREFIX,
        codec_type="AUTO",
        access_log=[access_log],
        route_config={
            "name": "local",
            "virtual_hosts": [{"name": "all", "domains": ["*"], "routes": [_route(cfg)]}],
        },
        http_filters=_http_filters(cfg),
    )
    return {
        "name": "gateway",
        "address": _address(cfg.listen_address, cfg.listen_port),
        "filter_chains": [
            {"filters": [{"name": "envoy.filters.network.http_connection_manager", "typed_config": manager}]}
        ],
    }


def _static_endpoints(name: str, members: tuple[Upstream, ...]) -> dict[str, Any]:
    return {
        "cluster_name": name,
        "endpoints": [{"lb_endpoints": [{"endpoint": {"address": _address(m.host, m.port)}} for m in members]}],
    }


def _http2() -> dict[str, Any]:
    """Cluster option: talk HTTP/2 (prior knowledge) to the upstream hosts."""
    return {
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": _typed(
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
            explicit_http_config={"http2_protocol_options": {}},
        )
    }


def _picker_cluster(cfg: EnvoyConfig) -> dict[str, Any]:
    cluster: dict[str, Any] = {
        "name": PICKER_CLUSTER,
        "type": "STATIC",
        "connect_timeout": _duration(cfg.connect_timeout_s),
        # gRPC needs HTTP/2; without it every request fails with a protocol error (500).
        "typed_extension_protocol_options": _http2(),
        "load_assignment": _static_endpoints(PICKER_CLUSTER, cfg.pickers),
    } | _picker_health(cfg)
    if cfg.picker_tls:
        # Like the GIE reference: encrypt, but accept epp's self-signed certificate (no validation context).
        cluster["transport_socket"] = {
            "name": "envoy.transport_sockets.tls",
            "typed_config": _typed(
                "envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
                sni=cfg.picker_sni,
                common_tls_context={"alpn_protocols": ["h2"]},
            ),
        }
    return cluster


def _pool_cluster(cfg: EnvoyConfig) -> dict[str, Any]:
    base: dict[str, Any] = {"name": POOL_CLUSTER, "connect_timeout": _duration(cfg.connect_timeout_s)}
    if cfg.retries > 0:
        base["circuit_breakers"] = {"thresholds": [{"max_retries": MAX_CONCURRENT_RETRIES}]}
    if cfg.pool_http2:
        base["typed_extension_protocol_options"] = _http2()
    if cfg.routing is Routing.ORIGINAL_DST:
        return base | {
            "type": "ORIGINAL_DST",
            "lb_policy": "CLUSTER_PROVIDED",
            "original_dst_lb_config": {"use_http_header": True, "http_header_name": DESTINATION_HEADER},
        }
    override = _typed(
        "envoy.extensions.load_balancing_policies.override_host.v3.OverrideHost",
        override_host_sources=[
            {"metadata": {"key": LB_NAMESPACE, "path": [{"key": DESTINATION_HEADER}]}},
            {"header": DESTINATION_HEADER},
        ],
        # Report the endpoint actually used (after retries, fallback) as the EPP protocol's "served" key.
        selected_host_key={"key": LB_NAMESPACE, "path": [{"key": SERVED_KEY}]},
        fallback_policy={
            "policies": [
                {
                    "typed_extension_config": {
                        "name": "envoy.load_balancing_policies.round_robin",
                        "typed_config": _typed("envoy.extensions.load_balancing_policies.round_robin.v3.RoundRobin"),
                    }
                }
            ]
        },
    )
    return base | {
        "type": "STATIC",
        "load_balancing_policy": {
            "policies": [
                {"typed_extension_config": {"name": "envoy.load_balancing_policies.override_host", "typed_config": override}}
            ]
        },
        "load_assignment": _static_endpoints(POOL_CLUSTER, cfg.pool),
    }


def render(cfg: EnvoyConfig) -> dict[str, Any]:
    """The bootstrap as plain data (what ``to_yaml`` serialises); tests and callers may inspect or extend it."""
    return {
        "admin": {"address": _address("127.0.0.1", cfg.admin_port)},
        "static_resources": {
            "listeners": [_listener(cfg)],
            "clusters": [_pool_cluster(cfg)] + ([] if cfg.picker is None else [_picker_cluster(cfg)]),
        },
    }


def to_yaml(cfg: EnvoyConfig) -> str:
    return yaml.safe_dump(render(cfg), sort_keys=False)
