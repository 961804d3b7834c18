"""``--metrics-cert-dir`` / ``--metrics-client-ca-file``: /metrics over TLS, with client certificates
required when a CA is given, and upstream's refusals of unauthenticated or incomplete set-ups."""

from __future__ import annotations

import ssl
from pathlib import Path

import aiohttp
import dataclasses
import pytest

from epp.cli import build_parser
from epp.extproc.tls import self_signed_pair
from epp.serve_config import MetricsEndpointConfig, ServeConfig, metrics_ssl_context
from epp.telemetry import Telemetry
from epp.telemetry.http import MetricsServer


def serve_args(*argv: str, auth: bool) -> MetricsEndpointConfig:
    """The metrics-port section of ``epp serve``'s configuration, with ``auth`` as resolved."""
    metrics = ServeConfig.from_args(build_parser().parse_args(["serve", *argv])).metrics
    return dataclasses.replace(metrics, auth=auth)


def write_pair(directory: Path, name: str) -> tuple[Path, Path]:
    directory.mkdir(parents=True, exist_ok=True)
    key, cert = self_signed_pair(name)
    (directory / "tls.key").write_bytes(key)
    (directory / "tls.crt").write_bytes(cert)
    return directory / "tls.crt", directory / "tls.key"


async def fetch(port: int, client: tuple[Path, Path] | None) -> int:
    context = ssl.create_default_context()
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    if client is not None:
        context.load_cert_chain(*client)
    async with aiohttp.ClientSession() as session:
        async with session.get(f"https://127.0.0.1:{port}/metrics", ssl=context) as reply:
            await reply.read()
            return reply.status


async def test_client_ca_requires_a_client_certificate_it_signed(tmp_path: Path) -> None:
    write_pair(tmp_path / "server", "epp")
    client = write_pair(tmp_path / "client", "scraper")
    stranger = write_pair(tmp_path / "stranger", "stranger")
    args = serve_args("--metrics-cert-dir", str(tmp_path / "server"), "--metrics-client-ca-file", str(client[0]), auth=False)
    server = MetricsServer(Telemetry(), 0, host="127.0.0.1", ssl_context=metrics_ssl_context(args))
    await server.start()
    try:
        assert await fetch(server.port, client) == 200
        for refused in (None, stranger):
            with pytest.raises(aiohttp.ClientError):
                await fetch(server.port, refused)
        async with aiohttp.ClientSession() as session:  # plain HTTP to a TLS port fails too
            with pytest.raises(aiohttp.ClientError):
                await session.get(f"http://127.0.0.1:{server.port}/metrics")
    finally:
        await server.stop()


async def test_cert_dir_with_token_auth_serves_tls_without_client_certificates(tmp_path: Path) -> None:
    write_pair(tmp_path, "epp")
    context = metrics_ssl_context(serve_args("--metrics-cert-dir", str(tmp_path), auth=True))
    server = MetricsServer(Telemetry(), 0, host="127.0.0.1", ssl_context=context)
    await server.start()
    try:
        assert await fetch(server.port, None) == 200
    finally:
        await server.stop()


def test_upstream_refusals(tmp_path: Path) -> None:
    write_pair(tmp_path, "epp")
    assert metrics_ssl_context(serve_args(auth=False)) is None
    with pytest.raises(ValueError, match='"metrics-client-ca-file" requires "metrics-cert-dir"'):
        metrics_ssl_context(serve_args("--metrics-client-ca-file", str(tmp_path / "tls.crt"), auth=True))
    with pytest.raises(ValueError, match="without authentication"):
        metrics_ssl_context(serve_args("--metrics-cert-dir", str(tmp_path), auth=False))
    with pytest.raises(ValueError, match="cannot load"):
        metrics_ssl_context(serve_args("--metrics-cert-dir", str(tmp_path / "missing"), auth=True))
