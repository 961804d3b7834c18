"""``epp serve`` flags that the reference pickers' charts pass, beyond the core serving flags of
``epp.app``, and their value parsers; ``epp.serve_config`` turns the parsed flags into the typed
configuration. Each with its upstream meaning (GIE v1.5.0 ``cmd/epp/runner``, llm-d-router
``pkg/epp/server/options.go``):

* ``--model-server-metrics-{scheme,path,port,https-insecure-skip-verify}``: where engine metrics are
  scraped (``epp.metrics.poller.ScrapeTarget``); HTTPS certificates unverified by default, as in GIE. A
  ``metrics-data-source`` plugin in the config (``scheme``, ``path``, ``insecureSkipVerify``, as the
  charts render it) replaces the flags' scheme, path and verification, as it replaces GIE's default source.
* GIE's metric-name flags ``--total-queued-requests-metric``, ``--total-running-requests-metric``,
  ``--kv-cache-usage-percentage-metric``, ``--lora-info-metric``, ``--cache-info-metric``
  (``name`` or ``name{label=value}``, quoted or not, as the GIE chart renders them; an empty LoRA or
  cache-info value turns that series off): they replace what is read for endpoints without an
  engine-type label (llm-d's per-engine table stays for labelled ones). llm-d-router now refuses these
  flags in favour of engineConfigs; GIE charts still pass them, so epp applies them.
* ``--grpc-max-{recv,send}-msg-size``: size with units as upstream reads it (a trailing ``B`` dropped,
  then a Kubernetes quantity: ``10Mi``, ``10MiB``, ``25MB``, ``1k``); 0 / unset keeps epp's limit
  (``--max-body-bytes`` plus framing).
* ``--metrics-cert-dir`` (``tls.crt``/``tls.key``) serves ``/metrics`` over TLS ≥ 1.2;
  ``--metrics-client-ca-file`` additionally requires client certificates signed by that CA. As upstream:
  the CA file needs the cert dir, and TLS without a client CA needs ``--metrics-endpoint-auth``.
* ``--tls-min-version`` (``VersionTLS12``/``VersionTLS13``; epp never serves below TLS 1.2) and
  ``--tls-cipher-suites`` (Go's names, TLS ≤ 1.2 suites; TLS 1.3 names are accepted and, as upstream,
  change nothing) for ``--secure-serving``. The native transport applies both to its SSL context; for
  grpc.aio the suites go to gRPC core through ``GRPC_SSL_CIPHER_SUITES`` before gRPC loads, and TLS 1.3
  as minimum is refused there (grpc.aio cannot raise its minimum; use ``--grpc-server native``).
* ``--emit-endpoint-scores``: every scored endpoint's total score of the primary profile in the
  routing reply's ``envoy.lb`` metadata under ``x-gateway-destination-endpoint-scores``.
* ``--enable-grpc-stream-metrics``: ``llm_d_epp_extproc_streams_inflight``,
  ``…_stream_duration_seconds`` and ``…_streams_total{code}`` (``epp.extproc.stream_metrics``).
* ``--allow-experimental-plugins``: plugin types upstream marks alpha (``PluginType.alpha``) load only with it.
"""

from __future__ import annotations

import argparse
import ssl
from dataclasses import dataclass

from epp._util.cli import bool_flag, port, seconds
from epp.config.decode import ConfigError, parse_quantity
from epp.discovery.kubernetes import POOL_VERSIONS
from epp.metrics.engines import Selector, parse_selector

METRIC_FLAGS = ("total_queued_requests_metric", "total_running_requests_metric", "kv_cache_usage_percentage_metric",
                "lora_info_metric", "cache_info_metric")


@dataclass(frozen=True, slots=True)
class MetricName:
    """A metric-name flag as given: its selector, or None for an empty value (series off)."""

    selector: Selector | None


def metric_name(text: str) -> MetricName:
    try:
        return MetricName(parse_selector(text))
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def message_size(text: str) -> int:
    """``10MiB`` / ``10Mi`` / ``25MB`` / ``4194304``: upstream strips one trailing B, then reads a
    Kubernetes quantity."""
    value = text.strip()
    if len(value) > 1 and value[-1] in "Bb":
        value = value[:-1]
    try:
        return parse_quantity(value)
    except ConfigError:
        raise argparse.ArgumentTypeError(f"expected a size such as 10MiB, 25MB or 4194304, got {text!r}") from None


def scheme(text: str) -> str:
    if text not in ("http", "https"):
        raise argparse.ArgumentTypeError(f"expected http or https, got {text!r}")
    return text


TLS_VERSIONS = {"VersionTLS10": ssl.TLSVersion.TLSv1, "VersionTLS11": ssl.TLSVersion.TLSv1_1,
                "VersionTLS12": ssl.TLSVersion.TLSv1_2, "VersionTLS13": ssl.TLSVersion.TLSv1_3}
# Go crypto/tls name → OpenSSL name, for the suites Go lets a server choose (TLS 1.0–1.2).
GO_CIPHERS = {
    "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256": "ECDHE-ECDSA-AES128-GCM-SHA256",
    "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256": "ECDHE-RSA-AES128-GCM-SHA256",
    "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384": "ECDHE-ECDSA-AES256-GCM-SHA384",
    "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384": "ECDHE-RSA-AES256-GCM-SHA384",
    "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256": "ECDHE-ECDSA-CHACHA20-POLY1305",
    "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305": "ECDHE-ECDSA-CHACHA20-POLY1305",
    "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256": "ECDHE-RSA-CHACHA20-POLY1305",
    "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305": "ECDHE-RSA-CHACHA20-POLY1305",
    "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA": "ECDHE-ECDSA-AES128-SHA",
    "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA": "ECDHE-RSA-AES128-SHA",
    "TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA": "ECDHE-ECDSA-AES256-SHA",
    "TLS_ECDHE_RSA_WITH_AES_256_CBC_SHA": "ECDHE-RSA-AES256-SHA",
    "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA256": "ECDHE-ECDSA-AES128-SHA256",
    "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA256": "ECDHE-RSA-AES128-SHA256",
    "TLS_RSA_WITH_AES_128_GCM_SHA256": "AES128-GCM-SHA256",
    "TLS_RSA_WITH_AES_256_GCM_SHA384": "AES256-GCM-SHA384",
    "TLS_RSA_WITH_AES_128_CBC_SHA": "AES128-SHA",
    "TLS_RSA_WITH_AES_256_CBC_SHA": "AES256-SHA",
    "TLS_RSA_WITH_AES_128_CBC_SHA256": "AES128-SHA256",
}
TLS13_SUITES = frozenset({"TLS_AES_128_GCM_SHA256", "TLS_AES_256_GCM_SHA384", "TLS_CHACHA20_POLY1305_SHA256"})


def tls_version(text: str) -> ssl.TLSVersion:
    if text not in TLS_VERSIONS:
        raise argparse.ArgumentTypeError(f"expected one of {', '.join(TLS_VERSIONS)}, got {text!r}")
    return TLS_VERSIONS[text]


def cipher_suites(text: str) -> list[str]:
    """A comma-separated list of Go cipher suite names → OpenSSL names (TLS 1.3 names dropped)."""
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in GO_CIPHERS and n not in TLS13_SUITES]
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown cipher suite(s) {', '.join(unknown)} (Go crypto/tls names)")
    return [GO_CIPHERS[n] for n in names if n in GO_CIPHERS]


class _Extend(argparse.Action):
    """pflag's StringSlice: repeated flags add to the list."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: object,
                 option_string: str | None = None) -> None:
        setattr(namespace, self.dest, [*getattr(namespace, self.dest), *values])  # type: ignore[misc]


def add_upstream_flags(parser: argparse.ArgumentParser) -> None:
    m = parser.add_argument_group("engine metrics scraping (the reference's flags)")
    m.add_argument("--model-server-metrics-scheme", type=scheme, default="http", help="http or https")
    m.add_argument("--model-server-metrics-path", default="/metrics", help="path of the engines' metrics page")
    m.add_argument("--model-server-metrics-port", type=port, default=0,
                   help="port to scrape on every endpoint; 0 = the endpoint's metrics port, else its serving port")
    bool_flag(m, "--model-server-metrics-https-insecure-skip-verify", True,
              "with https: do not verify the engines' certificates (GIE's default)")
    for flag, what in (("--total-queued-requests-metric", "queued requests"),
                       ("--total-running-requests-metric", "running requests"),
                       ("--kv-cache-usage-percentage-metric", "KV-cache usage (0..1)"),
                       ("--lora-info-metric", "LoRA info (vLLM label format; empty = off)"),
                       ("--cache-info-metric", "cache info (block_size, num_gpu_blocks labels; empty = off)")):
        m.add_argument(flag, type=metric_name, default=None, metavar="NAME[{LABEL=VALUE,...}]",
                       help=f"GIE's series for {what}, for endpoints without an engine-type label; "
                            "None = epp's per-engine table (vLLM's names for them)")
    s = parser.add_argument_group("ext_proc TLS (--secure-serving)")
    s.add_argument("--tls-min-version", type=tls_version, default=None, metavar="|".join(TLS_VERSIONS),
                   help="lowest TLS version accepted (epp never goes below TLS 1.2)")
    s.add_argument("--tls-cipher-suites", type=cipher_suites, action=_Extend, default=[], metavar="NAME[,NAME...]",
                   help="TLS ≤ 1.2 cipher suites allowed (Go crypto/tls names); TLS 1.3 suites are not configurable")
    t = parser.add_argument_group("metrics endpoint TLS")
    t.add_argument("--metrics-cert-dir", default="", metavar="DIR",
                   help="directory with tls.crt and tls.key: serve /metrics over TLS")
    t.add_argument("--metrics-client-ca-file", default="", metavar="PEM",
                   help="CA bundle: /metrics requires client certificates it signed (needs --metrics-cert-dir)")
    o = parser.add_argument_group("routing observability and plugins")
    bool_flag(o, "--emit-endpoint-scores", False,
              "add every scored endpoint's score to the routing metadata (envoy.lb x-gateway-destination-endpoint-scores)")
    bool_flag(o, "--enable-grpc-stream-metrics", False,
              "ext_proc stream metrics: in-flight gauge, hold-duration histogram, completions by gRPC code")
    bool_flag(o, "--allow-experimental-plugins", False,
              "load plugin types upstream marks alpha (refused at start otherwise)")


def add_kubernetes_flags(parser: argparse.ArgumentParser) -> None:
    """The reference picker's discovery and HA flags (gie-facts D2); ``epp.discovery.kube_setup`` consumes
    them as ``KubernetesFlags``."""
    group = parser.add_argument_group("Kubernetes discovery")
    group.add_argument("--pool-name", default="", help="InferencePool to serve (or use --endpoint-selector)")
    group.add_argument("--pool-namespace", default="", help="namespace of the pool; default $NAMESPACE, else default")
    group.add_argument("--pool-group", default="inference.networking.k8s.io", choices=sorted(POOL_VERSIONS),
                       help="API group of the InferencePool (v1, or the older x-k8s.io v1alpha2)")
    group.add_argument("--endpoint-selector", default="",
                       help="pool-less mode: label selector of model-server pods (k=v,k2=v2)")
    group.add_argument("--endpoint-target-ports", default="",
                       help="pool-less mode: comma list of 1-8 model-server ports")
    group.add_argument("--kubeconfig", default="",
                       help="kubeconfig file; default $KUBECONFIG, then in-cluster, then ~/.kube/config")
    bool_flag(group, "--ha-enable-leader-election", False, "active-passive HA: only the Lease holder reports ready")
    group.add_argument("--ha-lease-duration", type=seconds, default="15s", metavar="DURATION",
                       help="how long a Lease holds without renewal (Go duration, or bare seconds)")
    group.add_argument("--ha-renew-deadline", type=seconds, default="10s", metavar="DURATION",
                       help="how long the leader keeps retrying a renewal before giving up the lead")
    group.add_argument("--ha-retry-period", type=seconds, default="2s", metavar="DURATION",
                       help="wait between attempts to acquire or renew the Lease")
