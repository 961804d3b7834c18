"""The native HTTP/2 transport, frame by frame, against a raw client on a real 127.0.0.1 socket.

Interop with real peers is covered elsewhere (grpc's C-core client in tests/extproc/test_server.py,
Envoy in tests/e2e); here are the corners those peers rarely reach: small flow-control windows, frame
splitting, CONTINUATION and padding, oversize or compressed messages, PING, RST_STREAM and draining.
"""

from __future__ import annotations

import asyncio
import struct
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import hpack
import pytest

from epp.extproc.h2 import wire
from epp.extproc.h2.connection import CallError
from epp.extproc.h2.server import H2Server

PATH = b"/test.Echo/Stream"


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
        block = self.encoder.encode([(b":method", b"POST"), (b":scheme", b"http"), (b":path", path),
                                     (b"content-type", b"application/grpc"), (b"te", b"trailers")])
        self.send(wire.frame(wire.HEADERS, flags, sid, block))

    @staticmethod
    def message(data: bytes, compressed: int = 0) -> bytes:
        return wire.GRPC_PREFIX.pack(compressed, len(data)) + data

    async def frame(self) -> tuple[int, int, int, bytes]:
        hi, lo, kind, flags, sid = wire.FRAME_HEADER.unpack(await self.reader.readexactly(9))
        return kind, flags, sid & 0x7FFFFFFF, await self.reader.readexactly(hi << 16 | lo)

    async def until(self, kind: int, sid: int | None = None) -> tuple[int, bytes]:
        """Skip to the next frame of ``kind`` (on ``sid``); returns (flags, payload)."""
        for _ in range(100):
            k, flags, s, payload = await asyncio.wait_for(self.frame(), 5)
            if k == kind and (sid is None or s == sid):
                return flags, payload
        raise AssertionError(f"no frame of type {kind}")

    async def response(self, sid: int) -> tuple[list[bytes], dict[bytes, bytes], list[int]]:
        """Messages, trailers and DATA frame sizes of one stream, read to its END_STREAM."""
        data, sizes, trailers = b"", [], {}
        for _ in range(200):
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


@pytest.fixture
async def served() -> AsyncIterator[Served]:
    calls: list[EchoCall] = []

    def route(path: bytes) -> EchoCall | None:
        if path != PATH:
            return None
        calls.append(EchoCall())
        return calls[-1]

    server = H2Server(route, host="127.0.0.1", port=0, ssl_context=None, max_message_bytes=100_000)
    await server.start()
    harness = Served(server, calls)
    yield harness
    for writer in harness.writers:
        writer.close()
        await writer.wait_closed()
    await server.stop(0)


async def test_messages_split_and_batched_across_frames(served: Served) -> None:
    calls = served.calls
    client = await served.connect()
    client.open(1)
    stream = Client.message(b"a" * 70) + Client.message(b"b") + Client.message(b"c" * 30)
    client.send(wire.frame(wire.DATA, 0, 1, stream[:40]), wire.frame(wire.DATA, 0, 1, stream[40:90]),
                wire.frame(wire.DATA, wire.END_STREAM, 1, stream[90:]))
    messages, trailers, _ = await client.response(1)
    assert messages == [b"a" * 70, b"b", b"c" * 30, b"bye"]
    assert trailers[b"grpc-status"] == b"0"
    assert calls[0].log == [b"a" * 70, b"b", b"c" * 30, "half-closed", "closed"]


async def test_small_peer_windows_park_data_until_window_update(served: Served) -> None:
    client = await served.connect({wire.SETTINGS_INITIAL_WINDOW_SIZE: 10})
    await client.until(wire.SETTINGS)
    client.open(1)
    client.send(wire.frame(wire.DATA, wire.END_STREAM, 1, Client.message(b"x" * 20)))
    flags, first = await client.until(wire.DATA, 1)
    assert len(first) == 10 and not flags & wire.END_STREAM
    client.send(wire.window_update(1, 1000))
    messages, trailers, sizes = await client.response(1)
    assert sum(sizes) == 2 * 5 + 20 + 3 - 10 and trailers[b"grpc-status"] == b"0"  # the rest, then trailers


async def test_replies_respect_the_peer_frame_size(served: Served) -> None:
    client = await served.connect({wire.SETTINGS_MAX_FRAME_SIZE: 16_384})
    client.open(1)
    big = b"z" * 40_000
    client.send(*(wire.frame(wire.DATA, 0, 1, chunk) for chunk in _chunks(Client.message(big), 16_000)),
                wire.frame(wire.DATA, wire.END_STREAM, 1))
    messages, _, sizes = await client.response(1)
    assert messages[0] == big and max(sizes) <= 16_384


def _chunks(data: bytes, size: int) -> list[bytes]:
    return [data[i : i + size] for i in range(0, len(data), size)]


async def test_padded_headers_with_continuation(served: Served) -> None:
    client = await served.connect()
    block = client.encoder.encode([(b":method", b"POST"), (b":path", PATH), (b"x-long", b"v" * 300)])
    padded = bytes([4]) + block[:100] + b"\0" * 4
    client.send(wire.frame(wire.HEADERS, wire.PADDED, 1, padded), wire.frame(wire.CONTINUATION, wire.END_HEADERS, 1, block[100:]),
                wire.frame(wire.DATA, wire.END_STREAM | wire.PADDED, 1, bytes([2]) + Client.message(b"hi") + b"\0\0"))
    messages, _, _ = await client.response(1)
    assert messages == [b"hi", b"bye"]


@pytest.mark.parametrize(
    ("payload", "status"),
    [(Client.message(b"x" * 100_001), b"8"), (Client.message(b"x", compressed=1), b"12"), (Client.message(b"fail"), b"3")],
)
async def test_bad_messages_end_only_their_call(served: Served, payload: bytes, status: bytes) -> None:
    calls = served.calls
    client = await served.connect()
    client.open(1)
    client.send(*(wire.frame(wire.DATA, 0, 1, chunk) for chunk in _chunks(payload, 60_000)))
    _, trailers, _ = await client.response(1)
    assert trailers[b"grpc-status"] == status
    assert await client.until(wire.RST_STREAM, 1) == (0, struct.pack(">I", wire.NO_ERROR))  # stop sending
    client.open(3)
    client.send(wire.frame(wire.DATA, wire.END_STREAM, 3, Client.message(b"ok")))
    assert (await client.response(3))[0] == [b"ok", b"bye"]
    assert calls[0].log[-1] == "closed"


async def test_unknown_method_is_unimplemented(served: Served) -> None:
    client = await served.connect()
    client.open(1, path=b"/nope/Nope", flags=wire.END_HEADERS | wire.END_STREAM)
    messages, trailers, _ = await client.response(1)
    assert messages == [] and trailers[b"grpc-status"] == b"12" and b"/nope/Nope" in trailers[b"grpc-message"]


async def test_ping_is_acked_and_reset_closes_the_call(served: Served) -> None:
    calls = served.calls
    client = await served.connect()
    client.send(wire.frame(wire.PING, 0, 0, b"12345678"))
    assert await client.until(wire.PING) == (wire.ACK, b"12345678")
    client.open(1)
    client.send(wire.frame(wire.DATA, 0, 1, Client.message(b"one")))
    await client.until(wire.DATA, 1)
    client.send(wire.rst_stream(1, wire.CANCEL), wire.frame(wire.PING, 0, 0, b"87654321"))
    await client.until(wire.PING)
    assert calls[0].log == [b"one", "closed"]


async def test_drain_refuses_new_streams_and_lets_open_ones_finish(served: Served) -> None:
    calls = served.calls
    client = await served.connect()
    client.open(1)
    client.send(wire.frame(wire.DATA, 0, 1, Client.message(b"before")))
    await client.until(wire.DATA, 1)
    stopping = asyncio.create_task(served.server.stop(10))
    _, goaway = await client.until(wire.GOAWAY)
    assert struct.unpack(">II", goaway[:8]) == (1, wire.NO_ERROR)
    client.open(3)
    assert await client.until(wire.RST_STREAM, 3) == (0, struct.pack(">I", wire.REFUSED_STREAM))
    client.send(wire.frame(wire.DATA, wire.END_STREAM, 1, Client.message(b"after")))
    messages, trailers, _ = await client.response(1)
    assert messages == [b"after", b"bye"] and trailers[b"grpc-status"] == b"0"
    await asyncio.wait_for(stopping, 5)
    assert await client.reader.read() == b""  # the server closed the connection once idle
    assert len(calls) == 1


async def test_not_http2_gets_goaway(served: Served) -> None:
    reader, writer = await served.raw()
    writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    client = Client(reader, writer)
    _, payload = await client.until(wire.GOAWAY)
    assert struct.unpack(">I", payload[4:8])[0] == wire.PROTOCOL_ERROR
    assert await reader.read() == b""


async def test_streams_past_the_limit_are_refused() -> None:
    calls: list[EchoCall] = []
    server = H2Server(lambda path: calls.append(EchoCall()) or calls[-1], host="127.0.0.1", port=0, ssl_context=None,
                      max_message_bytes=1000, max_streams=1)
    await server.start()
    harness = Served(server, calls)
    try:
        client = await harness.connect()
        _, settings = await client.until(wire.SETTINGS)
        assert (wire.SETTINGS_MAX_CONCURRENT_STREAMS, 1) in struct.iter_unpack(">HI", settings)
        client.open(1)
        client.open(3)
        assert await client.until(wire.RST_STREAM, 3) == (0, struct.pack(">I", wire.REFUSED_STREAM))
        client.send(wire.frame(wire.DATA, wire.END_STREAM, 1, Client.message(b"still served")))
        assert (await client.response(1))[0] == [b"still served", b"bye"]
        assert len(calls) == 1
    finally:
        for writer in harness.writers:
            writer.close()
            await writer.wait_closed()
        await server.stop(0)
