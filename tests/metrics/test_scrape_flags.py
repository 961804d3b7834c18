"""The reference's scraping flags on a real poller: HTTPS with a generated certificate (verified or not),
another path and port, and GIE's metric-name flags as its chart renders them."""

from __future__ import annotations

import socket
import ssl
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from aiohttp import web

from epp.cli import build_parser
from epp.datastore import Datastore, Endpoint
from epp.extproc.tls import self_signed_pair
from epp.metrics import MetricsPoller
from epp.serve_config import EngineMetricsConfig, ServeConfig, engine_specs, scrape_target
from tests.conftest import wait_for

DATA = Path(__file__).parent / "data"


def serve_args(*argv: str) -> EngineMetricsConfig:
    """The engine-scraping section of ``epp serve``'s configuration for these flags."""
    return ServeConfig.from_args(build_parser().parse_args(["serve", *argv])).engine_metrics


def _tls_context() -> ssl.SSLContext:
    key, cert = self_signed_pair("engine")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "c").write_bytes(cert)
        (Path(tmp) / "k").write_bytes(key)
        context.load_cert_chain(Path(tmp) / "c", Path(tmp) / "k")
    return context


@asynccontextmanager
async def page(text: str, path: str, tls: bool) -> AsyncIterator[int]:
    """One engine metrics page on 127.0.0.1 (HTTPS with a fresh self-signed certificate when ``tls``)."""
    async def handle(request: web.Request) -> web.Response:
        return web.Response(text=text, content_type="text/plain")

    app = web.Application()
    app.router.add_get(path, handle)
    runner = web.AppRunner(app, shutdown_timeout=1.0)
    await runner.setup()
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    try:
        await web.SockSite(runner, sock, ssl_context=_tls_context() if tls else None).start()
        yield sock.getsockname()[1]
    finally:
        await runner.cleanup()


async def scrape(args: EngineMetricsConfig, port: int, endpoint_port: int = 1) -> Datastore:
    """Poll one endpoint (serving on ``endpoint_port``, metrics on ``port``) until it has metrics or an error."""
    ds = Datastore()
    ds.replace_all([Endpoint("e", "127.0.0.1", endpoint_port, metrics_port=port)])
    async with MetricsPoller(ds, interval=0.02, timeout=1.0, target=scrape_target(args), specs=engine_specs(args)):
        await wait_for(lambda: (s := ds.get("e")) is not None and (s.metrics is not None or s.scrape_error is not None))
    return ds


async def test_https_scrape_with_a_self_signed_certificate_unless_verification_is_asked() -> None:
    vllm = (DATA / "vllm.prom").read_text()
    async with page(vllm, "/custom/metrics", tls=True) as port:
        ds = await scrape(serve_args("--model-server-metrics-scheme=https", "--model-server-metrics-path=/custom/metrics"), port)
        state = ds.get("e")
        assert state is not None and state.metrics is not None and state.scrape_error is None
        strict = serve_args("--model-server-metrics-scheme", "https", "--model-server-metrics-path", "/custom/metrics",
                            "--model-server-metrics-https-insecure-skip-verify=false")
        state = (await scrape(strict, port)).get("e")
        assert state is not None and state.metrics is None and "certificate" in (state.scrape_error or "").lower()
        plain = (await scrape(serve_args("--model-server-metrics-path=/custom/metrics"), port)).get("e")
        assert plain is not None and plain.metrics is None  # http against an https port fails, clearly


async def test_metrics_port_flag_overrides_the_endpoints_ports() -> None:
    async with page((DATA / "vllm.prom").read_text(), "/metrics", tls=False) as port:
        state = (await scrape(serve_args(f"--model-server-metrics-port={port}"), port=1)).get("e")
    assert state is not None and state.metrics is not None


async def test_gie_metric_name_flags_as_the_chart_renders_them_read_a_triton_page() -> None:
    """GIE's chart for Triton TensorRT-LLM: label selectors (quotes included) and LoRA / cache info off."""
    args = serve_args(
        "--total-queued-requests-metric", '"nv_trt_llm_request_metrics{request_type=waiting}"',
        "--total-running-requests-metric", 'nv_trt_llm_request_metrics{request_type="scheduled"}',
        "--kv-cache-usage-percentage-metric", "nv_trt_llm_kv_cache_block_metrics{kv_cache_block_type=fraction}",
        "--lora-info-metric", '""', "--cache-info-metric=",
    )
    async with page((DATA / "triton_trtllm.prom").read_text(), "/metrics", tls=False) as port:
        state = (await scrape(args, port)).get("e")
    assert state is not None and state.metrics is not None, state and state.scrape_error
    assert (state.metrics.waiting, state.metrics.running, state.metrics.kv_usage) == (2, 6, 0.1005859375)
    defaults = (await _default_scrape_of_triton()).get("e")
    assert defaults is not None and defaults.metrics is None  # without the flags the vLLM names are missing


async def _default_scrape_of_triton() -> Datastore:
    async with page((DATA / "triton_trtllm.prom").read_text(), "/metrics", tls=False) as port:
        return await scrape(serve_args(), port)


@pytest.mark.parametrize("argv", [
    ["--total-queued-requests-metric", "x{bad"], ["--kv-cache-usage-percentage-metric", "{a=b}"],
    ["--model-server-metrics-scheme", "ftp"], ["--model-server-metrics-port", "70000"],
    ["--model-server-metrics-https-insecure-skip-verify=maybe"],
])
def test_bad_scrape_flags_are_usage_errors(argv: list[str]) -> None:
    with pytest.raises(SystemExit):
        serve_args(*argv)


def test_empty_required_metric_names_are_refused() -> None:
    with pytest.raises(ValueError, match="total-queued-requests-metric must name a metric"):
        serve_args("--total-queued-requests-metric=")


async def test_a_metrics_data_source_in_the_config_sets_scheme_path_and_verification() -> None:
    """As the llm-d chart renders it; the config's source replaces the flags' scheme and path."""
    from epp.config import ConfigError, parse_config_text

    head = "apiVersion: llm-d.ai/v1alpha1\nkind: EndpointPickerConfig\nplugins:\n- type: metrics-data-source\n"
    params = '  parameters: {scheme: "https", path: "/custom/metrics", insecureSkipVerify: true}\n'
    args = serve_args("--model-server-metrics-path=/ignored")
    target = scrape_target(args, parse_config_text(head + params))
    assert (target.scheme, target.path, target.insecure_skip_verify) == ("https", "/custom/metrics", True)
    async with page((DATA / "vllm.prom").read_text(), "/custom/metrics", tls=True) as port:
        ds = Datastore()
        ds.replace_all([Endpoint("e", "127.0.0.1", 1, metrics_port=port)])
        async with MetricsPoller(ds, interval=0.02, target=target):
            await wait_for(lambda: (s := ds.get("e")) is not None and s.metrics is not None)
    default = scrape_target(args, parse_config_text(head))
    assert (default.scheme, default.path) == ("http", "/metrics")  # upstream's defaults, not the flag's path
    for bad, key in (("{scheme: ftp}", "plugins[0].parameters"), ("{verify: true}", "plugins[0].parameters.verify")):
        with pytest.raises(ConfigError) as err:
            scrape_target(args, parse_config_text(head + f"  parameters: {bad}\n"))
        assert err.value.path == key
