"""A raw HTTP/2 client and an echo service for testing epp's native transport frame by frame.

Shared by the transport's unit tests (test_connection.py) and its abuse suite (test_abuse.py): the client
writes whatever frames a test builds, well-formed or not, and reads the server's frames one by one.
"""

from __future__ import annotations

import asyncio
import contextlib
import struct
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import hpack

from epp.extproc.h2 import wire
from epp.extproc.h2.connection import DEFAULT_STALL_TIMEOUT, CallError
from epp.extproc.h2.server import H2Server

PATH = b"/test.Echo/Stream"
REQUEST_HEADERS = [(b":method", b"POST"), (b":scheme", b"http"), (b":path", PATH),
                   (b"content-type", b"application/grpc"), (b"te", b"trailers")]


@dataclass
class EchoCall:
    """Replies with each message as is; ``b"fail"`` ends the call with INVALID_ARGUMENT."""

    log: list[object] = field(default_factory=list)

    def message(self, data: memoryview) -> list[bytes]:
        self.log.append(bytes(data))
        if bytes(data) == b"fail":
            raise CallError(3, "told to fail")
        return [bytes(data)]

    def half_closed(self) -> list[bytes]:
        self.log.append("half-closed")
        return [b"bye"]

    def closed(self) -> None:
        self.log.append("closed")


class Client:
    """Raw HTTP/2: writes frames, reads frames, decodes header blocks."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.encoder, self.decoder = hpack.Encoder(), hpack.Decoder()

    def send(self, *frames: bytes) -> None:
        self.writer.write(b"".join(frames))

    def open(self, sid: int, path: bytes = PATH, flags: int = wire.END_HEADERS) -> None:
        self.send(wire.frame(wire.HEADERS, flags, sid, self.headers(path)))

    def headers(self, path: bytes = PATH) -> bytes:
        return self.encoder.encode([(k, path if k == b":path" else v) for k, v in REQUEST_HEADERS])

    @staticmethod
    def message(data: bytes, compressed: int = 0) -> bytes:
        return wire.GRPC_PREFIX.pack(compressed, len(data)) + data

    async def frame(self) -> tuple[int, int, int, bytes]:
        hi, lo, kind, flags, sid = wire.FRAME_HEADER.unpack(await self.reader.readexactly(9))
        return kind, flags, sid & 0x7FFFFFFF, await self.reader.readexactly(hi << 16 | lo)

    async def until(self, kind: int, sid: int | None = None, frames: int = 100) -> tuple[int, bytes]:
        """Skip to the next frame of ``kind`` (on ``sid``); returns (flags, payload)."""
        for _ in range(frames):
            k, flags, s, payload = await asyncio.wait_for(self.frame(), 5)
            if k == kind and (sid is None or s == sid):
                return flags, payload
        raise AssertionError(f"no frame of type {kind}")

    async def goaway(self, frames: int = 100) -> tuple[int, int]:
        """The server's GOAWAY (last stream id, error code), then the end of the connection."""
        _, payload = await self.until(wire.GOAWAY, frames=frames)
        last, code = struct.unpack(">II", payload[:8])
        assert await self.closed(), "the server kept the connection open after its GOAWAY"
        return last, code

    async def closed(self, timeout: float = 5) -> bool:
        """Whether the server ends the connection within ``timeout`` (what it still sends is skipped)."""
        with contextlib.suppress(ConnectionError):
            async with asyncio.timeout(timeout):
                while await self.reader.read(65536):
                    pass
        return self.reader.at_eof() or self.writer.is_closing()

    async def response(self, sid: int, frames: int = 200) -> tuple[list[bytes], dict[bytes, bytes], list[int]]:
        """Messages, trailers and DATA frame sizes of one stream, read to its END_STREAM."""
        data, sizes, trailers = b"", [], {}
        for _ in range(frames):
            kind, flags, s, payload = await asyncio.wait_for(self.frame(), 5)
            if s != sid:
                continue
            if kind == wire.DATA:
                data += payload
                sizes.append(len(payload))
            elif kind == wire.HEADERS:
                trailers = dict(self.decoder.decode(payload, raw=True))
            if flags & wire.END_STREAM and kind in (wire.DATA, wire.HEADERS):
                break
        messages = []
        while data:
            _, n = wire.GRPC_PREFIX.unpack_from(data)
            messages.append(data[5 : 5 + n])
            data = data[5 + n :]
        return messages, trailers, sizes


@dataclass
class Served:
    server: H2Server
    calls: list[EchoCall]
    writers: list[asyncio.StreamWriter] = field(default_factory=list)

    async def raw(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        reader, writer = await asyncio.open_connection("127.0.0.1", self.server.port)
        self.writers.append(writer)
        return reader, writer

    async def connect(self, settings: dict[int, int] | None = None) -> Client:
        client = Client(*await self.raw())
        client.send(wire.PREFACE, wire.settings(settings or {}))
        return client

    async def still_serves(self) -> None:
        """A well-behaved client on a fresh connection gets its call answered."""
        client = await self.connect()
        client.open(1)
        client.send(wire.frame(wire.DATA, wire.END_STREAM, 1, Client.message(b"still here")))
        messages, trailers, _ = await client.response(1)
        assert messages == [b"still here", b"bye"] and trailers[b"grpc-status"] == b"0"


@contextlib.asynccontextmanager
async def serving(max_message_bytes: int = 100_000, max_streams: int | None = None,
                  stall_timeout: float = DEFAULT_STALL_TIMEOUT) -> AsyncIterator[Served]:
    """An ``H2Server`` on 127.0.0.1 routing ``PATH`` to a new ``EchoCall``; client connections closed at exit."""
    calls: list[EchoCall] = []

    def route(path: bytes) -> EchoCall | None:
        if path != PATH:
            return None
        calls.append(EchoCall())
        return calls[-1]

    server = H2Server(route, host="127.0.0.1", port=0, ssl_context=None, max_message_bytes=max_message_bytes,
                      max_streams=max_streams, stall_timeout=stall_timeout)
    await server.start()
    harness = Served(server, calls)
    try:
        yield harness
    finally:
        for writer in harness.writers:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()
        await server.stop(0)
