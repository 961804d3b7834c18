"""The picker's gRPC servers: ext_proc (TLS by default) and the plaintext health port, with graceful stop.

The ext_proc port runs on grpc.aio or, with ``native=True`` (``epp serve``'s default), on epp's own HTTP/2
transport (``epp.extproc.h2``); the health port is always grpc.aio (its ``Watch`` streams are long-lived).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import ssl
from collections.abc import Iterator
from typing import Any

import grpc
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as pb_grpc
from grpc_health.v1 import health_pb2_grpc

from epp.extproc.h2.connection import Call
from epp.extproc.h2.server import H2Server
from epp.extproc.health import HEALTH_CHECK_PATH, HealthCheckCall, HealthService
from epp.extproc.servicer import PROCESS_PATH, StreamServicer

log = logging.getLogger(__name__)

# Room for BUFFERED bodies up to the body limit plus protobuf framing (Python's default cap is 4 MiB).
MESSAGE_OVERHEAD_BYTES = 1024 * 1024
# Probes are short Check calls; Watch streams live forever, so their number needs a cap too.
HEALTH_MAX_RPCS = 256
# gRPC sets SO_REUSEPORT by default, so a second picker on a busy port binds "successfully" and the
# kernel splits the gateway's connections between the two; without it the second one fails to start.
NO_REUSEPORT = [("grpc.so_reuseport", 0)]
# ``epp serve --workers N``: the parent checked the port is free, then its workers share it on purpose.
REUSEPORT = [("grpc.so_reuseport", 1)]


class PickerServer:
    """Owns the ext_proc server and the grpc.aio health server. ``port``/``health_port`` 0 binds a free
    port; the bound ports are readable after ``start``.

    ``max_concurrent_rpcs`` makes gRPC refuse calls beyond it with RESOURCE_EXHAUSTED (None: no cap); the
    native transport advertises it as each connection's SETTINGS_MAX_CONCURRENT_STREAMS and refuses more.
    ``stop`` reports NOT_SERVING at once but keeps serving new streams for the drain period (gateways
    and Kubernetes endpoints need time to stop sending here; refusing at once makes a fail-closed
    gateway answer 5xx on every rollout), then stops accepting and lets open streams finish within the
    grace period (after which they are cancelled), and closes the health port last.
    """

    def __init__(
        self,
        servicer: StreamServicer[Any],
        health: HealthService,
        *,
        port: int,
        health_port: int,
        host: str = "[::]",
        credentials: grpc.ServerCredentials | ssl.SSLContext | None = None,
        max_message_bytes: int = 16 * 1024 * 1024,
        health_on_main_port: bool = False,
        max_concurrent_rpcs: int | None = None,
        native: bool = False,
        grpc_max_recv_bytes: int = 0,
        grpc_max_send_bytes: int = 0,
        reuse_port: bool = False,
        health_host: str | None = None,
    ) -> None:
        """``credentials``: an ``ssl.SSLContext`` for the native transport, grpc credentials for grpc.aio.
        ``grpc_max_{recv,send}_bytes`` (``--grpc-max-*-msg-size``), when not 0, replace the per-message
        limits derived from ``max_message_bytes`` (the native transport has one limit: the receive one).
        ``reuse_port`` lets sibling workers (``epp.workers``) share the ext_proc port; ``health_host`` (default
        ``host``) is where the health port listens (a worker's is private to its parent, on loopback)."""
        self.servicer = servicer
        self.health = health
        self.host = host
        self.port = port
        self.health_port = health_port
        self.health_host = health_host or host
        self.reuse_port = reuse_port
        self.credentials = credentials
        self.health_on_main_port = health_on_main_port
        self.native = native
        self.max_message_bytes = max_message_bytes
        limit = max_message_bytes + MESSAGE_OVERHEAD_BYTES
        self._recv_limit = grpc_max_recv_bytes or limit
        self._options = [("grpc.max_receive_message_length", self._recv_limit),
                         ("grpc.max_send_message_length", grpc_max_send_bytes or limit),
                         *(REUSEPORT if reuse_port else NO_REUSEPORT)]
        self._max_rpcs = max_concurrent_rpcs
        self._main: grpc.aio.Server | None = None
        self._native: H2Server | None = None
        self._health: grpc.aio.Server | None = None

    async def start(self) -> None:
        health = grpc.aio.server(options=NO_REUSEPORT, maximum_concurrent_rpcs=HEALTH_MAX_RPCS)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, health)
        with bind_error(f"{self.health_host}:{self.health_port}", "health"):
            self.health_port = health.add_insecure_port(f"{self.health_host}:{self.health_port}")
        await health.start()
        try:
            if self.native:
                assert self.credentials is None or isinstance(self.credentials, ssl.SSLContext)
                native = H2Server(self._route, host=self.host, port=self.port, ssl_context=self.credentials,
                                  max_message_bytes=self._recv_limit,
                                  max_streams=self._max_rpcs, reuse_port=self.reuse_port)
                with bind_error(f"{self.host}:{self.port}", "ext_proc"):
                    await native.start()
                self._native, self.port = native, native.port
            else:
                await self._start_grpcio()
        except BaseException:
            await health.stop(0)  # a half-started server must not keep the health port answering
            raise
        self._health = health
        log.info("ext_proc server on %s:%d (%s, %s), health on %s:%d", self.host, self.port,
                 "native HTTP/2" if self.native else "grpc.aio",
                 "TLS" if self.credentials is not None else "plaintext", self.health_host, self.health_port)

    async def _start_grpcio(self) -> None:
        main = grpc.aio.server(options=self._options, maximum_concurrent_rpcs=self._max_rpcs)
        pb_grpc.add_ExternalProcessorServicer_to_server(self.servicer, main)
        if self.health_on_main_port:
            health_pb2_grpc.add_HealthServicer_to_server(self.health, main)
        address = f"{self.host}:{self.port}"
        with bind_error(address, "ext_proc"):
            if self.credentials is not None:
                assert isinstance(self.credentials, grpc.ServerCredentials)
                self.port = main.add_secure_port(address, self.credentials)
            else:
                self.port = main.add_insecure_port(address)
        await main.start()
        self._main = main

    def _route(self, path: bytes) -> Call | None:
        if path == PROCESS_PATH:
            return self.servicer.new_call()
        if path == HEALTH_CHECK_PATH and self.health_on_main_port:
            return HealthCheckCall(self.health)
        return None

    async def stop(
        self, grace: float, drain: float = 0.0, hurry: asyncio.Event | None = None, now: asyncio.Event | None = None
    ) -> None:
        """NOT_SERVING now; keep serving for ``drain`` s (or until ``hurry`` is set); then stop with ``grace``
        (cut to none when ``now`` is set: an operator's second Ctrl-C)."""
        self.health.drain()
        if (self._main is not None or self._native is not None) and drain > 0:
            log.info("draining: health NOT_SERVING, still serving new streams for %.1fs", drain)
            waiter = hurry.wait() if hurry is not None else asyncio.sleep(drain)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(waiter, drain)
        if self._native is not None:
            log.info("no longer accepting streams; open ones have up to %.1fs to finish", grace)
            await self._native.stop(grace, now)
            self._native = None
        if self._main is not None:
            log.info("no longer accepting streams; open ones have up to %.1fs to finish", grace)
            await _stop_grpc(self._main, grace, now)
            self._main = None
        if self._health is not None:
            await self._health.stop(0)
            self._health = None


@contextlib.contextmanager
def bind_error(address: str, role: str) -> Iterator[None]:
    """A bind failure — grpc's RuntimeError pointing at GRPC_VERBOSITY, the native server's EADDRINUSE /
    EADDRNOTAVAIL — as an OSError saying what to change."""
    try:
        yield
    except (RuntimeError, OSError) as err:
        if isinstance(err, OSError) and err.errno not in (errno.EADDRINUSE, errno.EADDRNOTAVAIL):
            raise
        raise OSError(f"cannot listen on {address} for {role}: the port is in use (another epp?) or the address "
                      "is not on this host") from None


async def _stop_grpc(server: grpc.aio.Server, grace: float, now: asyncio.Event | None) -> None:
    """``server.stop(grace)``, restarted with no grace once ``now`` is set (a smaller grace wins)."""
    graceful = asyncio.ensure_future(server.stop(0 if now is not None and now.is_set() else grace))
    if now is None or now.is_set():
        await graceful
        return
    cut = asyncio.ensure_future(now.wait())
    await asyncio.wait({graceful, cut}, return_when=asyncio.FIRST_COMPLETED)
    cut.cancel()
    if not graceful.done():
        await server.stop(0)
    await graceful
