"""Listening side of the native gRPC transport: accept connections, serve calls, drain on stop."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl

from epp.extproc.h2.connection import DEFAULT_MAX_STREAMS, DEFAULT_STALL_TIMEOUT, H2Connection, Router

log = logging.getLogger(__name__)


class H2Server:
    """gRPC over HTTP/2 (cleartext h2c with prior knowledge, or TLS with ALPN h2) on one port.

    ``host`` "" or "[::]" listens on every interface, dual-stack on one port; ``port`` 0 picks a free
    one (read ``port`` after ``start``). ``max_streams`` bounds the open calls per connection (advertised in
    SETTINGS; streams past it are refused). ``stop(grace)`` stops accepting, sends GOAWAY so clients open
    no new calls here, lets open calls finish within ``grace`` seconds, then closes what is left.
    """

    def __init__(self, router: Router, *, host: str, port: int, ssl_context: ssl.SSLContext | None,
                 max_message_bytes: int, max_streams: int | None = None, reuse_port: bool = False,
                 stall_timeout: float = DEFAULT_STALL_TIMEOUT) -> None:
        """``reuse_port``: share the port with sibling ``epp serve --workers`` processes (SO_REUSEPORT);
        ``stall_timeout``: seconds a client may leave our replies unread before its call or connection ends."""
        self.router = router
        self.stall_timeout = stall_timeout
        self.reuse_port = reuse_port
        self.max_streams = max_streams or DEFAULT_MAX_STREAMS
        self.host = host
        self.port = port
        self.ssl_context = ssl_context
        self.max_message_bytes = max_message_bytes
        self.connections: set[H2Connection] = set()
        self._server: asyncio.Server | None = None
        self._idle = asyncio.Event()

    def _connection(self) -> H2Connection:
        connection = H2Connection(self.router, self.max_message_bytes, self._closed, self.max_streams, self.stall_timeout)
        self.connections.add(connection)
        self._idle.clear()
        return connection

    def _closed(self, connection: H2Connection) -> None:
        self.connections.discard(connection)
        if not self.connections:
            self._idle.set()

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        host = self.host.strip("[]")
        if host in ("", "::"):
            self._server = await loop.create_server(self._connection, sock=_dual_stack_socket(self.port, self.reuse_port),
                                                    ssl=self.ssl_context)
        else:
            self._server = await loop.create_server(self._connection, host, self.port, ssl=self.ssl_context,
                                                    reuse_address=True, reuse_port=self.reuse_port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self, grace: float, now: asyncio.Event | None = None) -> None:
        """Stop accepting, let open streams finish within ``grace`` (or until ``now`` is set), close the rest."""
        if self._server is None:
            return
        server, self._server = self._server, None
        server.close()
        for connection in list(self.connections):
            connection.drain()
        if self.connections:
            waiters = [asyncio.ensure_future(self._idle.wait())] + ([asyncio.ensure_future(now.wait())] if now else [])
            await asyncio.wait(waiters, timeout=grace, return_when=asyncio.FIRST_COMPLETED)
            for waiter in waiters:
                waiter.cancel()
        for connection in list(self.connections):
            connection.close()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(server.wait_closed(), 1.0)


def _dual_stack_socket(port: int, reuse_port: bool = False) -> socket.socket:
    """One listening socket for IPv4 and IPv6 (like gRPC's ``[::]``), IPv4 only where IPv6 is missing."""
    try:
        sock = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        address: tuple[str, int] = ("::", port)
    except OSError:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        address = ("0.0.0.0", port)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind(address)
    sock.setblocking(False)
    return sock
