"""TLS between a real Envoy and ``epp serve`` with a provided certificate, rotated while serving.

The certificate directory is laid out as Kubernetes mounts a Secret (``tls.crt`` → ``..data/tls.crt``,
``..data`` → a timestamped directory) and rotated the way the kubelet does it: a new directory, then
an atomic rename of the ``..data`` symlink. The served certificate is identified by its SHA-256
fingerprint from a fresh handshake. (The generated self-signed certificate through Envoy is covered
by the ``tls`` variant in test_routing/test_streaming.)
"""

from __future__ import annotations

import hashlib
import os
import ssl
from collections.abc import Iterator
from pathlib import Path

import pytest

from epp.envoy.stack import LocalGateway
from epp.extproc.tls import CERT_FILE, KEY_FILE, self_signed_pair
from tests.e2e.harness import Stack, chat, logged, post


def fingerprint(pem: bytes | str) -> str:
    text = pem.decode() if isinstance(pem, bytes) else pem
    return hashlib.sha256(ssl.PEM_cert_to_DER_cert(text)).hexdigest()


class SecretVolume:
    """A directory shaped like a mounted Kubernetes Secret, updated atomically like the kubelet does."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.version = 0
        for name in (CERT_FILE, KEY_FILE):
            (root / name).symlink_to(Path("..data") / name)

    def write(self) -> str:
        """Publish a new key pair; returns its certificate's fingerprint."""
        self.version += 1
        target = self.root / f"..2026_v{self.version}"
        target.mkdir()
        key, cert = self_signed_pair()
        (target / KEY_FILE).write_bytes(key)
        (target / CERT_FILE).write_bytes(cert)
        tmp = self.root / "..data_tmp"
        tmp.symlink_to(target.name)
        os.replace(tmp, self.root / "..data")
        return fingerprint(cert)


@pytest.fixture(scope="module")
def secret(tmp_path_factory: pytest.TempPathFactory) -> SecretVolume:
    return SecretVolume(tmp_path_factory.mktemp("secret"))


@pytest.fixture(scope="module")
def gateway(stack: Stack, secret: SecretVolume, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalGateway]:
    secret.write()
    gw = LocalGateway(stack.engines.upstreams, tmp_path_factory.mktemp("tls"), picker_tls=True,
                      picker_args=["--cert-path", str(secret.root), "--enable-cert-reload"])
    with gw:
        yield gw


def served(gw: LocalGateway) -> str:
    return fingerprint(ssl.get_server_certificate(("127.0.0.1", gw.picker.grpc_port)))


async def routed_through(gw: LocalGateway) -> None:
    reply = await post(gw.envoy, chat())
    assert reply.status == 200, reply.body
    assert logged(gw.envoy, [reply.request_id])[reply.request_id].upstream == reply.json()["engine"]["headers"][
        "x-gateway-destination-endpoint"]


async def test_provided_certificate_serves_envoy_and_rotates_without_a_restart(
    gateway: LocalGateway, secret: SecretVolume
) -> None:
    first = fingerprint((secret.root / CERT_FILE).read_bytes())
    assert served(gateway) == first
    await routed_through(gateway)
    pid = gateway.picker.pid
    for _ in range(2):  # rotate twice: the watcher keeps following the symlink swaps
        rotated = secret.write()
        assert rotated != first
        assert served(gateway) == rotated  # a new handshake gets the new certificate at once
        await routed_through(gateway)  # Envoy keeps routing through the picker across the rotation
        first = rotated
    assert gateway.picker.pid == pid
    assert "reloaded TLS certificate" in (gateway.workdir / "epp.log").read_text()
