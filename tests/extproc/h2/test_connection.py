"""The native HTTP/2 transport, frame by frame, against a raw client on a real 127.0.0.1 socket.

Interop with real peers is covered elsewhere (grpc's C-core client in tests/extproc/test_server.py,
Envoy in tests/e2e); here are the corners those peers rarely reach: small flow-control windows, frame
splitting, CONTINUATION and padding, oversize or compressed messages, PING, RST_STREAM and draining.
"""

from __future__ import annotations

import asyncio
import struct

import pytest

from epp.extproc.h2 import wire
from tests.extproc.h2.rawclient import PATH, Client, Served, serving

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
    async with serving(max_message_bytes=1000, max_streams=1) as harness:
        client = await harness.connect()
        _, settings = await client.until(wire.SETTINGS)
        assert (wire.SETTINGS_MAX_CONCURRENT_STREAMS, 1) in struct.iter_unpack(">HI", settings)
        client.open(1)
        client.open(3)
        assert await client.until(wire.RST_STREAM, 3) == (0, struct.pack(">I", wire.REFUSED_STREAM))
        client.send(wire.frame(wire.DATA, wire.END_STREAM, 1, Client.message(b"still served")))
        assert (await client.response(1))[0] == [b"still served", b"bye"]
        assert len(harness.calls) == 1
