"""Server TLS for the ext_proc port: a provided cert directory (optionally reloaded), or a self-signed cert.

The self-signed certificate uses ECDSA P-256 (generated in milliseconds, unlike the reference's
RSA-4096) and is valid for 10 years; gateways talking to the picker do not verify it, as with the
reference. Reloading hands gRPC a fetcher that is consulted on each new TLS handshake and returns
a new key pair only when ``tls.crt``/``tls.key`` changed on disk.
"""

from __future__ import annotations

import datetime
import ipaddress
import logging
import os
import ssl
import tempfile
from dataclasses import dataclass
from pathlib import Path

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

log = logging.getLogger(__name__)

CERT_FILE = "tls.crt"
KEY_FILE = "tls.key"


def self_signed_pair(common_name: str = "epp", now: datetime.datetime | None = None) -> tuple[bytes, bytes]:
    """(private key PEM, certificate PEM) for ``common_name``, localhost and 127.0.0.1."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = now or datetime.datetime.now(datetime.UTC)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    san = x509.SubjectAlternativeName(
        [x509.DNSName(common_name), x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
    )
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=3650))
        .add_extension(san, critical=False)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return key_pem, cert.public_bytes(serialization.Encoding.PEM)


class CertDirectory:
    """``tls.crt`` + ``tls.key`` in a directory (a mounted Secret); remembers what it loaded last."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._stamp: tuple[int, ...] | None = None

    def _current_stamp(self) -> tuple[int, ...]:
        """Change marker: a Secret update swaps symlinks (new inode), an in-place write changes mtime/size."""
        crt, key = (self.path / CERT_FILE).stat(), (self.path / KEY_FILE).stat()
        return (crt.st_ino, crt.st_mtime_ns, crt.st_size, key.st_ino, key.st_mtime_ns, key.st_size)

    def load(self) -> tuple[bytes, bytes]:
        """(key PEM, cert PEM); raises OSError with the missing file's name."""
        stamp = self._current_stamp()
        pair = ((self.path / KEY_FILE).read_bytes(), (self.path / CERT_FILE).read_bytes())
        self._stamp = stamp
        return pair

    def changed(self) -> bool:
        try:
            return self._current_stamp() != self._stamp
        except OSError:
            return False  # mid-rotation (files briefly missing): keep serving the old pair


def server_credentials(cert_path: str | None, reload: bool = False) -> grpc.ServerCredentials:
    """Credentials for ``--secure-serving``: the directory's pair (watched when ``reload``), else self-signed."""
    if not cert_path:
        key, cert = self_signed_pair()
        log.info("serving TLS with a generated self-signed certificate (ECDSA P-256)")
        return grpc.ssl_server_credentials([(key, cert)])
    directory = CertDirectory(cert_path)
    key, cert = directory.load()
    if not reload:
        return grpc.ssl_server_credentials([(key, cert)])

    def fetch() -> grpc.ServerCertificateConfiguration | None:
        if not directory.changed():
            return None
        try:
            new_key, new_cert = directory.load()
        except OSError as exc:
            log.warning("certificate reload failed, keeping the previous one: %s", exc)
            return None
        log.info("reloaded TLS certificate from %s", directory.path)
        return grpc.ssl_server_certificate_configuration([(new_key, new_cert)])

    # grpc documents None from the fetcher as "keep the current certificate"; grpc-stubs omits the None
    return grpc.dynamic_ssl_server_credentials(
        grpc.ssl_server_certificate_configuration([(key, cert)]), fetch)  # type: ignore[arg-type]


@dataclass(frozen=True, slots=True)
class TlsOptions:
    """``--tls-min-version`` and ``--tls-cipher-suites`` (OpenSSL names; empty = OpenSSL's defaults).
    Cipher suites restrict TLS ≤ 1.2 only; TLS 1.3's are not configurable, as upstream says."""

    minimum_version: ssl.TLSVersion = ssl.TLSVersion.TLSv1_2
    ciphers: tuple[str, ...] = ()


def server_ssl_context(cert_path: str | None, reload: bool = False, options: TlsOptions | None = None) -> ssl.SSLContext:
    """``--secure-serving`` for the native HTTP/2 transport: the same pairs as ``server_credentials``,
    ALPN ``h2``. With ``reload`` each new handshake checks the directory and switches to a fresh context
    when the files changed (OpenSSL's server-name callback runs on every handshake, with or without SNI)."""
    options = options or TlsOptions()
    if not cert_path:
        key, cert = self_signed_pair()
        log.info("serving TLS with a generated self-signed certificate (ECDSA P-256)")
        return _ssl_context(key, cert, options)
    directory = CertDirectory(cert_path)
    current = _ssl_context(*directory.load(), options)
    if not reload:
        return current
    state = {"context": current}

    def on_handshake(sock: ssl.SSLObject, server_name: str | None, context: ssl.SSLContext) -> None:
        if directory.changed():
            try:
                state["context"] = _ssl_context(*directory.load(), options)
                log.info("reloaded TLS certificate from %s", directory.path)
            except (OSError, ssl.SSLError) as exc:
                log.warning("certificate reload failed, keeping the previous one: %s", exc)
        sock.context = state["context"]

    current.sni_callback = on_handshake
    return current


def _ssl_context(key_pem: bytes, cert_pem: bytes, options: TlsOptions) -> ssl.SSLContext:
    """A server context with ALPN h2 (TLS ≥ 1.2 unless ``options`` say more); ``ssl`` loads key pairs
    from files only, so they pass through a private temporary directory that is removed at once."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = max(options.minimum_version, ssl.TLSVersion.TLSv1_2)
    if options.ciphers:
        context.set_ciphers(":".join(options.ciphers))
    context.set_alpn_protocols(["h2"])
    with tempfile.TemporaryDirectory(prefix="epp-tls-") as tmp:
        cert_file, key_file = Path(tmp) / CERT_FILE, Path(tmp) / KEY_FILE
        cert_file.write_bytes(cert_pem)
        key_file.touch(mode=0o600)
        key_file.write_bytes(key_pem)
        context.load_cert_chain(cert_file, key_file)
    return context
