"""``epp serve``'s configuration: the parsed flags as one frozen, typed value, built once.

``ServeConfig.from_args`` is the only code that reads the ``argparse.Namespace`` of ``epp serve``; every
part below it (``epp.service``, ``epp.workers``, discovery, telemetry, extproc) receives the section it
needs, so a part cannot depend on a flag it was not handed and a worker of ``--workers N`` gets exactly
its parent's configuration (the value is pickled to it). Checks that need only the flags run here, with
the flag named in the message; checks that need files, the EndpointPickerConfig or a kube-apiserver run
where those are loaded (``epp.service.PickerService``).

Sections follow the areas that consume them:

* ``serving``: the ext_proc listener (ports, TLS, limits, drain and grace, transport, worker count);
* ``metrics``: the ``/metrics`` port (auth resolved, TLS files);
* ``engine_metrics``: how engines are scraped (interval, staleness, target, GIE's metric-name flags);
* ``policy`` and ``routing``: the EndpointPickerConfig source and the director's options;
* ``discovery``: the endpoint source flags (``epp.discovery.sources.SourceFlags``);
* ``health``: passive health (``epp.datastore.health.HealthParams``); ``logging``: resolved log flags.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import ssl
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from epp._util.logs import LogSettings, log_settings
from epp.config.decode import ConfigError
from epp.datastore.endpoint import DEFAULT_ENGINE
from epp.datastore.health import HealthParams
from epp.discovery.kube_setup import KubernetesFlags
from epp.discovery.leader import LeaseTiming
from epp.discovery.sources import SourceFlags
from epp.metrics.engines import ENGINES, EngineSpec, Selector, with_legacy_names
from epp.metrics.poller import SOURCE_TYPE as METRICS_SOURCE
from epp.metrics.poller import ScrapeTarget
from epp.plugin.params import ParamError, decode_params
from epp.serve_flags import METRIC_FLAGS, MetricName
from epp.shared.serve import SharedStateConfig

if TYPE_CHECKING:
    from epp.config.model import EndpointPickerConfig

DEFAULT_POLICY = "default"  # epp's preset (epp.config.presets.DEFAULT_PRESET): minimum predicted TTFT
DEFAULT_MAX_STREAMS = 10_000


class ServeConfigError(ValueError):
    """Flags that contradict each other or are out of range; the message names the flag."""


@dataclass(frozen=True, slots=True)
class ServingConfig:
    """The ext_proc listener and the process around it."""

    grpc_port: int = 9002
    grpc_health_port: int = 9003
    bind_address: str = ""
    secure_serving: bool = True
    cert_path: str = ""
    enable_cert_reload: bool = False
    drain_timeout: float = 30.0
    shutdown_grace: float = 90.0
    max_body_bytes: int = 16 * 2**20
    max_concurrent_streams: int = DEFAULT_MAX_STREAMS
    health_checking: bool = False
    grpc_server: Literal["grpcio", "native"] = "native"
    grpc_max_recv_msg_size: int = 0
    grpc_max_send_msg_size: int = 0
    tls_min_version: ssl.TLSVersion | None = None
    tls_cipher_suites: tuple[str, ...] = ()
    """OpenSSL names (``--tls-cipher-suites`` translated from Go's)."""
    enable_grpc_stream_metrics: bool = False
    workers: int = 1
    worker: bool = False
    """This process is one worker of ``--workers N``: it shares the ext_proc port (SO_REUSEPORT) and serves
    health and metrics on private loopback ports that its parent aggregates."""

    @property
    def native(self) -> bool:
        return self.grpc_server == "native"


@dataclass(frozen=True, slots=True)
class MetricsEndpointConfig:
    """The ``/metrics`` port: ``auth`` is ``--metrics-endpoint-auth`` resolved (``auto`` decided)."""

    port: int = 9090
    auth: bool = False
    kubeconfig: str = ""
    cert_dir: str = ""
    client_ca_file: str = ""


@dataclass(frozen=True, slots=True)
class EngineMetricsConfig:
    """How engines' ``/metrics`` are scraped. ``metric_names``: GIE's metric-name flags that were given
    (flag dest → value), applied to endpoints without an engine-type label by ``engine_specs``."""

    refresh_interval: float = 0.05
    staleness_threshold: float = 2.0
    target: ScrapeTarget = field(default_factory=ScrapeTarget)
    metric_names: tuple[tuple[str, MetricName], ...] = ()


@dataclass(frozen=True, slots=True)
class PolicyConfig:
    """Where the EndpointPickerConfig comes from: ``text`` (inline YAML), else ``file`` (a path or a
    preset name), else ``DEFAULT_POLICY``."""

    file: str = ""
    text: str = ""
    allow_experimental_plugins: bool = False


@dataclass(frozen=True, slots=True)
class RoutingConfig:
    """The director's options."""

    subset_filter: bool = True
    emit_endpoint_scores: bool = False
    fallback_endpoints: int = 0


@dataclass(frozen=True, slots=True)
class ServeConfig:
    """Everything ``epp serve`` was told, checked and resolved; see the module docstring."""

    serving: ServingConfig = ServingConfig()
    metrics: MetricsEndpointConfig = MetricsEndpointConfig()
    engine_metrics: EngineMetricsConfig = EngineMetricsConfig()
    policy: PolicyConfig = PolicyConfig()
    routing: RoutingConfig = RoutingConfig()
    discovery: SourceFlags = field(default_factory=SourceFlags)
    health: HealthParams = field(default_factory=HealthParams)
    logging: LogSettings = field(default_factory=LogSettings)
    shared_state: SharedStateConfig = SharedStateConfig()

    @property
    def pool_name(self) -> str:
        """``--pool-name`` (the pool label of epp's own metrics; empty without one)."""
        return self.discovery.kubernetes.pool_name

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> ServeConfig:
        """The configuration of ``epp serve``'s parsed flags; ``ServeConfigError`` (or the section's own
        ``ValueError``, e.g. ``HealthParams``) names a bad flag."""
        if args.max_body_bytes < 1 or args.max_concurrent_streams < 1:
            raise ServeConfigError("--max-body-bytes and --max-concurrent-streams must be positive")
        if args.fallback_endpoints < 0:
            raise ServeConfigError("--fallback-endpoints must not be negative")
        if args.workers > 1 and args.ha_enable_leader_election:  # every worker would campaign for the Lease
            raise ServeConfigError("--workers > 1 cannot be combined with --ha-enable-leader-election (active-passive); "
                                   "run one worker per replica, or drop leader election for active-active")
        serving = ServingConfig(
            grpc_port=args.grpc_port, grpc_health_port=args.grpc_health_port, bind_address=args.bind_address,
            secure_serving=args.secure_serving, cert_path=args.cert_path, enable_cert_reload=args.enable_cert_reload,
            drain_timeout=args.drain_timeout, shutdown_grace=args.shutdown_grace, max_body_bytes=args.max_body_bytes,
            max_concurrent_streams=args.max_concurrent_streams, health_checking=args.health_checking,
            grpc_server=args.grpc_server, grpc_max_recv_msg_size=args.grpc_max_recv_msg_size,
            grpc_max_send_msg_size=args.grpc_max_send_msg_size, tls_min_version=args.tls_min_version,
            tls_cipher_suites=tuple(args.tls_cipher_suites), enable_grpc_stream_metrics=args.enable_grpc_stream_metrics,
            workers=args.workers,
        )
        kubernetes = KubernetesFlags(
            pool_name=args.pool_name, pool_namespace=args.pool_namespace or os.environ.get("NAMESPACE") or "default",
            pool_group=args.pool_group, endpoint_selector=args.endpoint_selector,
            endpoint_target_ports=args.endpoint_target_ports, kubeconfig=args.kubeconfig,
            leader_election=args.ha_enable_leader_election,
            lease=LeaseTiming(args.ha_lease_duration, args.ha_renew_deadline, args.ha_retry_period),
        )
        engine_metrics = EngineMetricsConfig(
            refresh_interval=args.refresh_metrics_interval, staleness_threshold=args.metrics_staleness_threshold,
            target=ScrapeTarget(args.model_server_metrics_scheme, args.model_server_metrics_path,
                                args.model_server_metrics_port, args.model_server_metrics_https_insecure_skip_verify),
            metric_names=tuple((name, value) for name in METRIC_FLAGS if (value := getattr(args, name)) is not None),
        )
        engine_specs(engine_metrics)  # a required series turned off is a flag error: report it before anything starts
        return cls(
            serving=serving,
            metrics=MetricsEndpointConfig(
                port=args.metrics_port, auth=_metrics_auth(args), kubeconfig=args.kubeconfig,
                cert_dir=args.metrics_cert_dir, client_ca_file=args.metrics_client_ca_file,
            ),
            engine_metrics=engine_metrics,
            policy=PolicyConfig(args.config_file, args.config_text, args.allow_experimental_plugins),
            routing=RoutingConfig(subset_filter=not args.disable_endpoint_subset_filter,
                                  emit_endpoint_scores=args.emit_endpoint_scores,
                                  fallback_endpoints=args.fallback_endpoints),
            discovery=SourceFlags(static_endpoints=args.static_endpoints, endpoints_file=args.endpoints_file,
                                  watch_endpoints_file=args.watch_endpoints_file, kubernetes=kubernetes),
            health=HealthParams(
                enabled=args.endpoint_health, consecutive_failures=args.endpoint_health_consecutive_failures,
                base_ejection=args.endpoint_health_base_ejection_time,
                max_ejection=args.endpoint_health_max_ejection_time,
                scrape_failure_window=args.endpoint_health_scrape_failure_window,
                max_ejection_percent=args.endpoint_health_max_ejection_percent,
            ),
            logging=log_settings(args),
            shared_state=SharedStateConfig.from_args(args, kubernetes.pool_name),
        )

    def for_worker(self) -> ServeConfig:
        """A worker's configuration under ``--workers N``: one picker on the shared ext_proc port, health and
        metrics on free private ports in plain HTTP (the parent checks scrapers' tokens and serves TLS)."""
        return dataclasses.replace(
            self,
            serving=dataclasses.replace(self.serving, workers=1, worker=True, grpc_health_port=0),
            metrics=dataclasses.replace(self.metrics, port=0, auth=False, cert_dir="", client_ca_file=""),
        )


def _metrics_auth(args: argparse.Namespace) -> bool:
    """``--metrics-endpoint-auth``: as given, else on exactly when Kubernetes discovery gives epp a
    kube-apiserver to review tokens with (the reference's default is true; it always has one)."""
    if args.metrics_endpoint_auth is not None:
        return bool(args.metrics_endpoint_auth)
    return bool(args.pool_name or args.endpoint_selector)


@dataclass(frozen=True, slots=True)
class MetricsSourceParams:
    """``metrics-data-source`` parameters (upstream's defaults)."""

    scheme: str = "http"
    path: str = "/metrics"
    insecure_skip_verify: bool = True


def scrape_target(flags: EngineMetricsConfig, config: EndpointPickerConfig | None = None) -> ScrapeTarget:
    """The flags' target, or the config's ``metrics-data-source`` parameters when it declares one (the
    port always comes from ``--model-server-metrics-port``)."""
    declared = [(i, p) for i, p in enumerate(config.plugins if config else ()) if p.type == METRICS_SOURCE]
    if not declared:
        return flags.target
    i, spec = declared[0]
    try:
        params = decode_params(MetricsSourceParams, spec.parameters)
        return ScrapeTarget(params.scheme, params.path, flags.target.port, params.insecure_skip_verify)
    except ParamError as err:
        raise ConfigError(f"plugins[{i}].parameters" + (f".{err.key}" if err.key else ""), err.message) from None
    except ValueError as err:  # ScrapeTarget's own checks (scheme, path)
        raise ConfigError(f"plugins[{i}].parameters", str(err)) from None


def engine_specs(flags: EngineMetricsConfig) -> Mapping[str, EngineSpec]:
    """``ENGINES`` with the metric-name flags applied to the default engine kind."""
    if not flags.metric_names:
        return ENGINES
    required = {"total_queued_requests_metric": "queue", "total_running_requests_metric": "running",
                "kv_cache_usage_percentage_metric": "kv"}
    changes: dict[str, Selector | None] = {}
    for name, value in flags.metric_names:
        if name in required:
            if value.selector is None:
                raise ServeConfigError(f"--{name.replace('_', '-')} must name a metric")
            changes[required[name]] = value.selector
        else:
            changes["lora" if name == "lora_info_metric" else "cache_info"] = value.selector
    specs = dict(ENGINES)
    specs[DEFAULT_ENGINE] = with_legacy_names(ENGINES[DEFAULT_ENGINE], **changes)
    return specs


def metrics_ssl_context(metrics: MetricsEndpointConfig) -> ssl.SSLContext | None:
    """The metrics port's TLS context, or None for plain HTTP; ``ValueError`` for upstream's refusals."""
    cert_dir, ca_file = metrics.cert_dir, metrics.client_ca_file
    if not cert_dir and not ca_file:
        return None
    if ca_file and not cert_dir:
        raise ValueError('"metrics-client-ca-file" requires "metrics-cert-dir"')
    if not ca_file and not metrics.auth:
        raise ValueError('"metrics-cert-dir" enables metrics TLS without authentication; set "metrics-client-ca-file" '
                         'or "metrics-endpoint-auth"')
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(Path(cert_dir) / "tls.crt", Path(cert_dir) / "tls.key")
        if ca_file:
            context.load_verify_locations(cafile=ca_file)
            context.verify_mode = ssl.CERT_REQUIRED
    except (OSError, ssl.SSLError) as err:
        raise ValueError(f"metrics TLS: cannot load {cert_dir!r} / {ca_file!r}: {err}") from None
    return context


def prepare_grpc_tls(serving: ServingConfig) -> None:
    """Before gRPC loads (it reads its cipher list once, at import): hand the suites to gRPC core and
    refuse what grpc.aio cannot do. ``ValueError`` for a set-up it cannot honour. Workers of
    ``--workers N`` inherit the environment their parent set here."""
    if not serving.secure_serving or serving.native:
        return
    if serving.tls_min_version == ssl.TLSVersion.TLSv1_3:
        raise ValueError("--tls-min-version VersionTLS13 needs --grpc-server native: grpc.aio cannot raise its TLS minimum")
    if serving.tls_cipher_suites:
        if "grpc" in sys.modules:
            raise ValueError("--tls-cipher-suites must be applied before gRPC loads; this process already loaded it")
        os.environ["GRPC_SSL_CIPHER_SUITES"] = ":".join(serving.tls_cipher_suites)
