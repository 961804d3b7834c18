"""``epp serve`` flags that the reference pickers' charts pass, beyond the core serving flags of
``epp.app``, each with its upstream meaning (GIE v1.5.0 ``cmd/epp/runner``, llm-d-router
``pkg/epp/server/options.go``):

* ``--model-server-metrics-{scheme,path,port,https-insecure-skip-verify}``: where engine metrics are
  scraped (``epp.metrics.poller.ScrapeTarget``); HTTPS certificates unverified by default, as in GIE.
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
* ``--allow-experimental-plugins``: accepted; epp ships no plugin upstream marks alpha, so nothing is gated.
"""

from __future__ import annotations

import argparse
import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from epp._util.cli import bool_flag, port
from epp.config.decode import ConfigError, parse_quantity
from epp.datastore.endpoint import DEFAULT_ENGINE
from epp.metrics.engines import ENGINES, EngineSpec, Selector, parse_selector, with_legacy_names
from epp.metrics.poller import ScrapeTarget

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
                       help=f"GIE's series for {what}, for endpoints without an engine-type label (default: vLLM's)")
    t = parser.add_argument_group("metrics endpoint TLS")
    t.add_argument("--metrics-cert-dir", default="", metavar="DIR",
                   help="directory with tls.crt and tls.key: serve /metrics over TLS")
    t.add_argument("--metrics-client-ca-file", default="", metavar="PEM",
                   help="CA bundle: /metrics requires client certificates it signed (needs --metrics-cert-dir)")
    bool_flag(parser.add_argument_group("configuration"), "--allow-experimental-plugins", False,
              "allow plugins upstream marks alpha (epp ships none, so this gates nothing)")


def scrape_target(args: argparse.Namespace) -> ScrapeTarget:
    return ScrapeTarget(args.model_server_metrics_scheme, args.model_server_metrics_path,
                        args.model_server_metrics_port, args.model_server_metrics_https_insecure_skip_verify)


def engine_specs(args: argparse.Namespace) -> Mapping[str, EngineSpec]:
    """``ENGINES`` with the metric-name flags applied to the default engine kind."""
    given = {name: getattr(args, name) for name in METRIC_FLAGS if getattr(args, name, None) is not None}
    if not given:
        return ENGINES
    required = {"total_queued_requests_metric": "queue", "total_running_requests_metric": "running",
                "kv_cache_usage_percentage_metric": "kv"}
    changes: dict[str, object] = {}
    for name, value in given.items():
        if name in required:
            if value.selector is None:
                raise ValueError(f"--{name.replace('_', '-')} must name a metric")
            changes[required[name]] = value.selector
        else:
            changes["lora" if name == "lora_info_metric" else "cache_info"] = value.selector
    specs = dict(ENGINES)
    specs[DEFAULT_ENGINE] = with_legacy_names(ENGINES[DEFAULT_ENGINE], **changes)  # type: ignore[arg-type]
    return specs


def metrics_ssl_context(args: argparse.Namespace, auth: bool) -> ssl.SSLContext | None:
    """The metrics port's TLS context, or None for plain HTTP; ``ValueError`` for upstream's refusals.
    ``auth``: whether token auth guards /metrics (``--metrics-endpoint-auth`` resolved)."""
    cert_dir, ca_file = args.metrics_cert_dir, args.metrics_client_ca_file
    if not cert_dir and not ca_file:
        return None
    if ca_file and not cert_dir:
        raise ValueError('"metrics-client-ca-file" requires "metrics-cert-dir"')
    if not ca_file and not auth:
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
