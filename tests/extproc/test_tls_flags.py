"""``--tls-min-version`` and ``--tls-cipher-suites`` on the ext_proc port: handshakes from a real TLS client
that offers one suite or one version, against both transports (grpc.aio through a real ``epp serve``,
since gRPC reads its cipher list when it loads)."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import subprocess
import sys
from collections.abc import Iterator

import pytest

from epp.envoy.config import Upstream
from epp.envoy.picker import PickerProcess
from epp.extproc.health import HealthService
from epp.extproc.server import PickerServer
from epp.extproc.servicer import ExtProcServicer
from epp.extproc.tls import TlsOptions, server_ssl_context
from epp.serve_flags import cipher_suites
from tests.extproc.builders import make_director

AES256 = "ECDHE-ECDSA-AES256-GCM-SHA384"
AES128 = "ECDHE-ECDSA-AES128-GCM-SHA256"


async def handshake(port: int, *, cipher: str | None = None, version: ssl.TLSVersion = ssl.TLSVersion.TLSv1_2) -> bool:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    context.minimum_version = context.maximum_version = version
    if cipher:
        context.set_ciphers(cipher)
    context.set_alpn_protocols(["h2"])
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port, ssl=context, ssl_shutdown_timeout=1), 10)
    except (ssl.SSLError, ConnectionError):
        return False
    writer.close()
    with contextlib.suppress(ssl.SSLError, ConnectionError, TimeoutError):  # gRPC may not answer close_notify
        await writer.wait_closed()
    return True


async def test_native_transport_applies_min_version_and_suites() -> None:
    options = TlsOptions(ssl.TLSVersion.TLSv1_2, tuple(cipher_suites("TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384")))
    server = PickerServer(ExtProcServicer(make_director("10.0.0.1:8000")), HealthService(lambda: True), port=0,
                          health_port=0, host="127.0.0.1", native=True, credentials=server_ssl_context(None, False, options))
    await server.start()
    try:
        assert await handshake(server.port, cipher=AES256)
        assert not await handshake(server.port, cipher=AES128)
        assert await handshake(server.port, version=ssl.TLSVersion.TLSv1_3)  # TLS 1.3 suites are not restricted
    finally:
        await server.stop(0)
    strict = server_ssl_context(None, False, TlsOptions(ssl.TLSVersion.TLSv1_3))
    server = PickerServer(ExtProcServicer(make_director("10.0.0.1:8000")), HealthService(lambda: True), port=0,
                          health_port=0, host="127.0.0.1", native=True, credentials=strict)
    await server.start()
    try:
        assert await handshake(server.port, version=ssl.TLSVersion.TLSv1_3)
        assert not await handshake(server.port, version=ssl.TLSVersion.TLSv1_2)
    finally:
        await server.stop(0)


@pytest.fixture(scope="module")
def grpcio_picker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PickerProcess]:
    picker = PickerProcess([Upstream("127.0.0.1", 1)], tls=True, log_path=tmp_path_factory.mktemp("tls") / "epp.log",
                           extra_args=["--tls-cipher-suites=TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384",
                                       "--tls-min-version=VersionTLS12"])
    picker.start()
    try:
        yield picker
    finally:
        picker.stop()


async def test_grpcio_transport_takes_the_suites_through_grpc_core(grpcio_picker: PickerProcess) -> None:
    assert await handshake(grpcio_picker.grpc_port, cipher=AES256)
    assert not await handshake(grpcio_picker.grpc_port, cipher=AES128)


def test_grpcio_refuses_tls13_minimum_clearly() -> None:
    done = subprocess.run([sys.executable, "-m", "epp", "serve", "--static-endpoints", "127.0.0.1:1",
                           "--grpc-server", "grpcio", "--tls-min-version=VersionTLS13"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "needs --grpc-server native" in done.stderr


@pytest.mark.parametrize("argv", [["--tls-min-version", "TLS12"], ["--tls-cipher-suites", "TLS_FAKE_SUITE"]])
def test_bad_tls_values_are_usage_errors(argv: list[str]) -> None:
    from epp.cli import build_parser

    with pytest.raises(SystemExit):
        build_parser().parse_args(["serve", *argv])
