"""Every flag of the reference charts that issue #19 lists is accepted by ``epp serve`` with chart-style
values, and a real ``epp serve`` started with all of them at once serves (each flag's effect is tested
beside the code it drives: tests/metrics/test_scrape_flags.py, tests/extproc/test_message_limits.py,
test_tls_flags.py, test_endpoint_scores.py, test_stream_metrics.py, tests/telemetry/test_metrics_tls.py,
tests/_util/test_logs.py)."""

from __future__ import annotations

import urllib.request
from pathlib import Path

import pytest

from epp.cli import build_parser
from epp.envoy.config import Upstream
from epp.envoy.picker import PickerProcess

# flag → a value as the GIE / llm-d charts render it (None: a bare boolean)
CHART_FLAGS: dict[str, str | None] = {
    "--model-server-metrics-scheme": "https",
    "--model-server-metrics-path": "/metrics",
    "--model-server-metrics-port": "8000",
    "--model-server-metrics-https-insecure-skip-verify": "true",
    "--total-queued-requests-metric": "vllm:num_requests_waiting",
    "--total-running-requests-metric": "vllm:num_requests_running",
    "--kv-cache-usage-percentage-metric": "vllm:kv_cache_usage_perc",
    "--lora-info-metric": "vllm:lora_requests_info",
    "--cache-info-metric": "vllm:cache_config_info",
    "--log-level": "info",
    "--zap-log-level": "debug",
    "--zap-devel": None,
    "--zap-stacktrace-level": "error",
    "--zap-time-encoding": "iso8601",
    "--grpc-max-recv-msg-size": "10MiB",
    "--grpc-max-send-msg-size": "10MiB",
    "--emit-endpoint-scores": None,
    "--enable-grpc-stream-metrics": None,
    "--tls-min-version": "VersionTLS12",
    "--tls-cipher-suites": "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384",
    "--metrics-client-ca-file": "/etc/epp/metrics-ca/ca.crt",
    "--metrics-cert-dir": "/etc/epp/metrics-certs",
    "--allow-experimental-plugins": None,
}


@pytest.mark.parametrize("flag", CHART_FLAGS)
def test_flag_is_accepted_in_both_spellings(flag: str) -> None:
    value = CHART_FLAGS[flag]
    forms = [[flag], [f"{flag}=true"], [f"{flag}=false"]] if value is None else [[flag, value], [f"{flag}={value}"]]
    for argv in forms:
        build_parser().parse_args(["serve", *argv])


def test_quoted_metric_names_as_the_gie_chart_renders_them() -> None:
    args = build_parser().parse_args(["serve", "--total-queued-requests-metric",
                                      '"nv_trt_llm_request_metrics{request_type="waiting"}"', "--lora-info-metric", '""'])
    assert args.total_queued_requests_metric.selector.labels == {"request_type": "waiting"}
    assert args.lora_info_metric.selector is None


def test_epp_serve_starts_with_every_flag_at_once(tmp_path: Path) -> None:
    flags = [f for flag, value in CHART_FLAGS.items() if not flag.startswith(("--metrics-c", "--tls-", "--zap-devel"))
             for f in ([flag] if value is None else [f"{flag}={value}"])]
    picker = PickerProcess([Upstream("127.0.0.1", 1)], extra_args=flags, log_path=tmp_path / "epp.log")
    picker.start()
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{picker.metrics_port}/metrics", timeout=10) as reply:  # noqa: S310
            page = reply.read().decode()
        assert "llm_d_epp_extproc_streams_inflight" in page
    finally:
        picker.stop()
    log = (tmp_path / "epp.log").read_text()
    assert "epp ready" in log


def test_boolean_flags_never_take_the_next_argument_as_pflag() -> None:
    """``--secure-serving false`` is --secure-serving=true plus a stray ``false`` the reference ignores:
    epp does the same and says so, instead of silently reading it the other way round."""
    from epp._util.cli import pflag_booleans
    from epp.cli import _subparsers

    serve = _subparsers(build_parser())["serve"]
    argv, strays = pflag_booleans(serve, ["--secure-serving", "false", "--zap-devel", "--v", "3", "--tracing=false",
                                          "--grpc-port", "9002", "--emit-endpoint-scores"])
    assert strays == ["false"]
    args = serve.parse_args(argv)
    assert (args.secure_serving, args.zap_devel, args.verbosity, args.tracing, args.emit_endpoint_scores) == (
        True, True, 3, False, True)


def test_epp_main_warns_about_a_stray_boolean_value(capsys: pytest.CaptureFixture[str]) -> None:
    from epp.cli import main

    assert main(["serve", "--secure-serving", "false"]) == 2  # no endpoint source: exits before serving
    assert "ignoring argument 'false': a boolean flag takes its value as --flag=false" in capsys.readouterr().err


def test_alpha_multicluster_config_needs_allow_experimental_plugins() -> None:
    """llm-d-router's multicluster example: its plugins are alpha upstream, so epp serve refuses them
    unless --allow-experimental-plugins is given, as upstream's loader does."""
    from epp._util.clock import WallClock
    from epp.config import ConfigError
    from epp.serve_config import ServeConfig
    from epp.service import load_policy
    from tests.config.corpus import CORPUS

    config = str(CORPUS / "llm-d__llm-d-router__pkg__epp__framework__plugins__README.md__L40.yaml")
    refused = ServeConfig.from_args(build_parser().parse_args(["serve", "--config-file", config])).policy
    with pytest.raises(ConfigError, match="alpha stability; start epp with --allow-experimental-plugins"):
        load_policy(refused, WallClock())
    allowed = ServeConfig.from_args(build_parser().parse_args(["serve", "--config-file", config,
                                                               "--allow-experimental-plugins"])).policy
    assert load_policy(allowed, WallClock())[1].plugins
