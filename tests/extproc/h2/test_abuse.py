"""The native HTTP/2 transport under abuse: what a security reviewer asks before it may be the default.

Each case is a hostile client on a raw 127.0.0.1 socket with a stated outcome (a GOAWAY with the RFC 9113
error code, an RST_STREAM, a gRPC status, or bounded buffering), and after each one the same server answers
a well-behaved client on a fresh connection. No case may log an error or leave an exception to the event
loop (the ``no_crash`` fixture). The same attacks through a real Envoy: tests/e2e/test_h2_abuse.py; random
frame sequences: test_fuzz_frames.py. docs/hardening.md ("The native transport under abuse") lists them.
"""

from __future__ import annotations

import asyncio
import logging
import struct
import time
from collections.abc import Iterator
from typing import Any

import pytest

from epp.extproc.h2 import wire
from epp.extproc.h2.connection import MAX_HEADER_LIST, RESET_CHECK_STREAMS
from tests.extproc.h2.rawclient import Client, Served, serving

RST_CANCEL = struct.pack(">I", wire.CANCEL)


@pytest.fixture(autouse=True)
def no_crash(caplog: pytest.LogCaptureFixture) -> Iterator[list[dict[str, Any]]]:
    """Fails the test if the transport logged an error or left an exception to the event loop."""
    unhandled: list[dict[str, Any]] = []
    loop = asyncio.get_running_loop() if _running() else None
    if loop is not None:
        loop.set_exception_handler(lambda _, context: unhandled.append(context))
    caplog.set_level(logging.WARNING, logger="epp.extproc.h2")
    yield unhandled
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert not errors and not unhandled, (errors, unhandled)


def _running() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


# -- rapid reset (CVE-2023-44487) ------------------------------------------------------------------

async def test_rapid_reset_drains_the_connection_with_enhance_your_calm(served: Served) -> None:
    """3,000 streams opened and reset at once: the 500th reset ends the burst with GOAWAY ENHANCE_YOUR_CALM.
    A drain, not an abort: the call already open on the connection (behind Envoy, another client's) finishes."""
    client = await served.connect()
    client.open(1)
    client.send(wire.frame(wire.DATA, 0, 1, Client.message(b"legit")))
    await client.until(wire.DATA, 1)
    burst = b"".join(wire.frame(wire.HEADERS, wire.END_HEADERS, sid, client.headers()) + wire.rst_stream(sid, wire.CANCEL)
                     for sid in range(3, 3 + 2 * 3000, 2))
    client.send(burst)
    _, goaway = await client.until(wire.GOAWAY, frames=10_000)
    last, code = struct.unpack(">II", goaway[:8])
    assert code == wire.ENHANCE_YOUR_CALM
    assert last == 1 + 2 * RESET_CHECK_STREAMS  # it stopped at the 500th reset, not the 3000th
    assert len(served.calls) == 1 + RESET_CHECK_STREAMS and all(call.log == ["closed"] for call in served.calls[1:])
    client.send(wire.frame(wire.DATA, wire.END_STREAM, 1, Client.message(b"finish")))
    messages, trailers, _ = await client.response(1, frames=10_000)  # after the refusals of the rest of the burst
    assert messages == [b"finish", b"bye"] and trailers[b"grpc-status"] == b"0"
    assert await client.closed()
    await served.still_serves()


async def test_resets_among_completed_calls_keep_the_connection(served: Served) -> None:
    """Envoy resets an ext_proc stream when its downstream client goes away: a third of the calls cancelled
    is traffic, not an attack."""
    client = await served.connect()
    frames = []
    for n, sid in enumerate(range(1, 2 * 900, 2)):
        frames.append(wire.frame(wire.HEADERS, wire.END_HEADERS, sid, client.headers()))
        if n % 3 == 0:
            frames.append(wire.rst_stream(sid, wire.CANCEL))
        else:
            frames.append(wire.frame(wire.DATA, wire.END_STREAM, sid, Client.message(b"ok")))
    client.send(*frames, wire.frame(wire.PING, 0, 0, b"pingpong"))
    assert await client.until(wire.PING, frames=10_000) == (wire.ACK, b"pingpong")  # no GOAWAY on the way
    assert len(served.calls) == 900


async def test_resets_of_answered_calls_are_not_premature(served: Served) -> None:
    """Envoy's ext_proc client resets every stream once it has its answers instead of waiting for the trailers
    (seen in the closed-loop soak: 500 of 500 streams); that is how a gateway talks, not a rapid reset."""
    client = await served.connect()
    for sid in range(1, 1 + 2 * (RESET_CHECK_STREAMS + 100), 2):
        client.open(sid)
        client.send(wire.frame(wire.DATA, 0, sid, Client.message(b"route me")))
        await client.until(wire.DATA, sid)
        client.send(wire.rst_stream(sid, wire.CANCEL))
    client.send(wire.frame(wire.PING, 0, 0, b"pingpong"))
    assert await client.until(wire.PING, frames=10_000) == (wire.ACK, b"pingpong")  # no GOAWAY on the way
    assert len(served.calls) == RESET_CHECK_STREAMS + 100


# -- header blocks: CONTINUATION flood, HPACK bombs ------------------------------------------------

async def test_continuation_flood_is_cut_at_the_header_list_limit(served: Served) -> None:
    client = await served.connect()
    client.send(wire.frame(wire.HEADERS, 0, 1, client.headers()))
    for _ in range(400):  # 6.5 MB of CONTINUATION without END_HEADERS, unless the server hangs up first
        try:
            client.send(wire.frame(wire.CONTINUATION, 0, 1, b"\x00" * 16_384))
            await client.writer.drain()
        except ConnectionError:
            break
    last, code = await client.goaway()
    assert code == wire.ENHANCE_YOUR_CALM and last == 0
    assert served.calls == []
    await served.still_serves()


@pytest.mark.parametrize(("block", "code"), [
    # a dynamic table size update far past SETTINGS_HEADER_TABLE_SIZE (4096)
    (b"\x3f\xe1\xff\xff\x07", wire.COMPRESSION_ERROR),
    # an integer that never ends, and a string longer than the block
    (b"\x0f" + b"\xff" * 60_000, wire.COMPRESSION_ERROR),
    (b"\x00\x7f\xff\xff\x03", wire.COMPRESSION_ERROR),
    # an index past both tables
    (b"\xff\xff\x0f", wire.COMPRESSION_ERROR),
    # a plain header list past SETTINGS_MAX_HEADER_LIST_SIZE (each field counts 32 bytes more)
    (b"".join(wire.literal(b"x-%d" % i, b"v" * 100) for i in range(500)), wire.ENHANCE_YOUR_CALM),
])
async def test_hpack_bombs_get_goaway(served: Served, block: bytes, code: int) -> None:
    client = await served.connect()
    _, settings = await client.until(wire.SETTINGS)
    assert (wire.SETTINGS_MAX_HEADER_LIST_SIZE, MAX_HEADER_LIST) in struct.iter_unpack(">HI", settings)
    client.send(wire.frame(wire.HEADERS, wire.END_HEADERS, 1, block))
    assert (await client.goaway())[1] == code
    assert served.calls == []
    await served.still_serves()


async def test_repeated_indexed_references_cannot_expand_past_the_limit(served: Served) -> None:
    """A 4 KB field stored in the dynamic table once, then referenced 20 times by one byte each: 80 KB of
    headers from a 20-byte block."""
    client = await served.connect()
    store = b"\x40\x05x-big" + _hpack_length(4_000) + b"v" * 4_000  # literal with incremental indexing → index 62
    client.send(wire.frame(wire.HEADERS, wire.END_HEADERS | wire.END_STREAM, 1, client.headers() + store))
    messages, trailers, _ = await client.response(1)  # the first block is fine (about 4.2 KB)
    assert trailers[b"grpc-status"] == b"0"
    client.send(wire.frame(wire.HEADERS, wire.END_HEADERS, 3, b"\xbe" * 20))  # indexed field 62, twenty times
    assert (await client.goaway())[1] == wire.ENHANCE_YOUR_CALM
    assert len(served.calls) == 1
    await served.still_serves()


def _hpack_length(n: int) -> bytes:
    """A raw (not Huffman) HPACK string length: 7-bit prefix integer."""
    out = bytearray([0x7F])
    n -= 0x7F
    while n >= 128:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


# -- flow-control windows ---------------------------------------------------------------------------

async def test_connection_window_overflow_is_a_flow_control_error(served: Served) -> None:
    client = await served.connect()
    client.send(wire.window_update(0, wire.MAX_WINDOW))  # 65,535 + 2^31-1 > 2^31-1
    assert (await client.goaway())[1] == wire.FLOW_CONTROL_ERROR
    await served.still_serves()


async def test_stream_window_overflow_and_zero_increment_reset_only_that_stream(served: Served) -> None:
    client = await served.connect()
    client.open(1)
    client.open(3)
    client.send(wire.window_update(1, wire.MAX_WINDOW), wire.window_update(3, 0))
    assert await client.until(wire.RST_STREAM, 1) == (0, struct.pack(">I", wire.FLOW_CONTROL_ERROR))
    assert await client.until(wire.RST_STREAM, 3) == (0, struct.pack(">I", wire.PROTOCOL_ERROR))
    assert [call.log for call in served.calls] == [["closed"], ["closed"]]
    client.open(5)
    client.send(wire.frame(wire.DATA, wire.END_STREAM, 5, Client.message(b"same connection")))
    assert (await client.response(5))[0] == [b"same connection", b"bye"]


async def test_zero_connection_window_increment_is_a_protocol_error(served: Served) -> None:
    client = await served.connect()
    client.send(wire.window_update(0, 0))
    assert (await client.goaway())[1] == wire.PROTOCOL_ERROR


async def test_settings_window_that_overflows_an_open_stream_is_a_flow_control_error(served: Served) -> None:
    client = await served.connect({wire.SETTINGS_INITIAL_WINDOW_SIZE: 0})
    client.open(1)
    client.send(wire.window_update(1, wire.MAX_WINDOW), wire.settings({wire.SETTINGS_INITIAL_WINDOW_SIZE: 100}))
    assert (await client.goaway())[1] == wire.FLOW_CONTROL_ERROR


# -- slow readers -----------------------------------------------------------------------------------

async def test_a_window_that_never_opens_ends_the_call_after_the_stall_timeout() -> None:
    async with serving(stall_timeout=0.5) as served:
        client = await served.connect({wire.SETTINGS_INITIAL_WINDOW_SIZE: 0})
        client.open(1)
        started = time.monotonic()
        client.send(wire.frame(wire.DATA, 0, 1, Client.message(b"answer me")))
        messages, trailers, sizes = await client.response(1)
        assert 0.4 < time.monotonic() - started < 3
        assert sizes == [] and trailers[b"grpc-status"] == b"8" and b"window" in trailers[b"grpc-message"]
        assert served.calls[0].log[-1] == "closed"
        await served.still_serves()


async def test_replies_parked_for_a_shut_window_are_bounded() -> None:
    """A client that keeps sending but never opens its window: past twice the message limit the call ends
    at once, long before the stall timeout."""
    async with serving(max_message_bytes=100_000, stall_timeout=60) as served:
        client = await served.connect({wire.SETTINGS_INITIAL_WINDOW_SIZE: 0})
        client.open(1)
        for _ in range(20):  # 2 MB of requests, each echoed into the parked replies
            client.send(wire.frame(wire.DATA, 0, 1, Client.message(b"q" * 99_000)))
        _, trailers, sizes = await client.response(1)
        assert sizes == [] and trailers[b"grpc-status"] == b"8"
        assert len(served.calls[0].log) < 20 and served.calls[0].log[-1] == "closed"  # it stopped reading them
        await served.still_serves()


async def test_a_client_that_never_reads_is_dropped_after_the_stall_timeout() -> None:
    """Its windows are wide open, so every echo goes to the socket, where nobody reads it."""
    async with serving(max_message_bytes=1 << 20, stall_timeout=1.0) as served:
        client = await served.connect({wire.SETTINGS_INITIAL_WINDOW_SIZE: wire.MAX_WINDOW})
        client.send(wire.window_update(0, wire.MAX_WINDOW - wire.DEFAULT_WINDOW))
        client.open(1)
        chunk = wire.frame(wire.DATA, 0, 1, Client.message(b"r" * 500_000))
        peak, started = 0, time.monotonic()
        while served.server.connections and time.monotonic() - started < 10:
            connection = next(iter(served.server.connections))
            if connection.transport is not None:
                peak = max(peak, connection.transport.get_write_buffer_size())
            if not client.writer.transport.is_closing() and client.writer.transport.get_write_buffer_size() < 4 << 20:
                client.send(chunk)  # keep asking; never read a byte of the answers
            await asyncio.sleep(0.01)
        assert not served.server.connections, "the server kept a connection whose client reads nothing"
        assert peak < 8 << 20  # the server stopped reading it instead of buffering every echo
        assert served.calls[0].log[-1] == "closed"
        await served.still_serves()


# -- frame sizes and SETTINGS values ----------------------------------------------------------------

@pytest.mark.parametrize(("frame", "code"), [
    (wire.frame_header(wire.DATA, 0, 1, (1 << 20) + 1), wire.FRAME_SIZE_ERROR),  # past our SETTINGS_MAX_FRAME_SIZE
    (wire.frame(wire.PING, 0, 0, b"1234567"), wire.FRAME_SIZE_ERROR),
    (wire.frame(wire.PING, 0, 1, b"12345678"), wire.PROTOCOL_ERROR),
    (wire.frame(wire.SETTINGS, 0, 0, b"\x00\x04\x00\x00\x00"), wire.FRAME_SIZE_ERROR),
    (wire.frame(wire.SETTINGS, wire.ACK, 0, b"\x00" * 6), wire.FRAME_SIZE_ERROR),
    (wire.frame(wire.SETTINGS, 0, 1), wire.PROTOCOL_ERROR),
    (wire.settings({wire.SETTINGS_MAX_FRAME_SIZE: 16_383}), wire.PROTOCOL_ERROR),
    (wire.settings({wire.SETTINGS_MAX_FRAME_SIZE: 1 << 24}), wire.PROTOCOL_ERROR),
    (wire.settings({wire.SETTINGS_ENABLE_PUSH: 2}), wire.PROTOCOL_ERROR),
    (wire.settings({wire.SETTINGS_INITIAL_WINDOW_SIZE: 1 << 31}), wire.FLOW_CONTROL_ERROR),
    (wire.frame(wire.WINDOW_UPDATE, 0, 0, b"\x00\x00\x01"), wire.FRAME_SIZE_ERROR),
    (wire.frame(wire.GOAWAY, 0, 0, b"\x00\x00\x00"), wire.FRAME_SIZE_ERROR),
    (wire.frame(wire.GOAWAY, 0, 1, b"\x00" * 8), wire.PROTOCOL_ERROR),
    (wire.frame(wire.PRIORITY, 0, 0, b"\x00" * 5), wire.PROTOCOL_ERROR),
    (wire.frame(wire.PUSH_PROMISE, wire.END_HEADERS, 1, b"\x00\x00\x00\x02"), wire.PROTOCOL_ERROR),
], ids=["oversized-frame", "short-ping", "ping-on-stream", "ragged-settings", "settings-ack-payload",
        "settings-on-stream", "small-max-frame", "huge-max-frame", "enable-push-2", "window-2^31", "short-window-update",
        "short-goaway", "goaway-on-stream", "priority-on-0", "push-promise"])
async def test_malformed_frames_and_settings_get_goaway(served: Served, frame: bytes, code: int) -> None:
    client = await served.connect()
    client.send(frame)
    assert (await client.goaway())[1] == code
    await served.still_serves()


async def test_short_rst_stream_and_priority_on_an_open_stream(served: Served) -> None:
    client = await served.connect()
    client.open(1)
    client.send(wire.frame(wire.PRIORITY, 0, 1, b"\x00" * 4))  # a stream error: only stream 1 ends
    assert await client.until(wire.RST_STREAM, 1) == (0, struct.pack(">I", wire.FRAME_SIZE_ERROR))
    client.send(wire.frame(wire.RST_STREAM, 0, 1, b"\x00\x08"))
    assert (await client.goaway())[1] == wire.FRAME_SIZE_ERROR


async def test_an_oversized_grpc_message_is_refused_from_its_prefix(served: Served) -> None:
    """A 4 GiB length prefix ends the call at once, before a byte of it is buffered."""
    client = await served.connect()
    client.open(1)
    client.send(wire.frame(wire.DATA, 0, 1, wire.GRPC_PREFIX.pack(0, 2**32 - 1)))
    _, trailers, _ = await client.response(1)
    assert trailers[b"grpc-status"] == b"8"
    assert served.calls[0].log == ["closed"]


# -- interleaving, closed and idle streams ----------------------------------------------------------

@pytest.mark.parametrize("after", [
    wire.frame(wire.DATA, 0, 3, Client.message(b"x")),  # DATA on another stream inside an open header block
    wire.frame(wire.DATA, 0, 1, Client.message(b"x")),
    wire.frame(wire.CONTINUATION, wire.END_HEADERS, 3, b""),  # CONTINUATION for the wrong stream
    wire.frame(wire.PING, 0, 0, b"12345678"),
], ids=["data-other-stream", "data-same-stream", "continuation-other-stream", "ping"])
async def test_frames_interleaved_into_a_header_block_are_a_protocol_error(served: Served, after: bytes) -> None:
    client = await served.connect()
    client.open(3, flags=wire.END_HEADERS)
    block = client.headers()
    client.send(wire.frame(wire.HEADERS, 0, 5, block[:5]), after)
    assert (await client.goaway())[1] == wire.PROTOCOL_ERROR
    await served.still_serves()


@pytest.mark.parametrize("frame", [
    wire.frame(wire.DATA, 0, 7, Client.message(b"x")),
    wire.rst_stream(7, wire.CANCEL),
    wire.window_update(7, 10),
    wire.frame(wire.CONTINUATION, wire.END_HEADERS, 1, b""),
], ids=["data", "rst", "window-update", "continuation"])
async def test_frames_on_idle_streams_are_a_protocol_error(served: Served, frame: bytes) -> None:
    client = await served.connect()
    client.open(1)
    client.send(frame)
    assert (await client.goaway())[1] == wire.PROTOCOL_ERROR


@pytest.mark.parametrize("sid", [1, 2, 0], ids=["reused", "even", "zero"])
async def test_headers_that_cannot_open_a_stream_are_a_protocol_error(served: Served, sid: int) -> None:
    client = await served.connect()
    client.open(3, flags=wire.END_HEADERS | wire.END_STREAM)
    await client.response(3)
    client.open(sid)
    assert (await client.goaway())[1] == wire.PROTOCOL_ERROR


async def test_frames_on_a_closed_stream_are_ignored(served: Served) -> None:
    client = await served.connect()
    client.open(1)
    client.send(wire.frame(wire.DATA, wire.END_STREAM, 1, Client.message(b"done")))
    await client.response(1)
    client.send(wire.frame(wire.DATA, 0, 1, Client.message(b"late")), wire.window_update(1, 100), wire.rst_stream(1, wire.CANCEL),
                wire.frame(wire.PRIORITY, 0, 1, b"\x00" * 5), wire.frame(wire.PING, 0, 0, b"stillup!"))
    assert await client.until(wire.PING) == (wire.ACK, b"stillup!")
    assert served.calls[0].log == [b"done", "half-closed", "closed"]


# -- PING and SETTINGS floods -----------------------------------------------------------------------

@pytest.mark.parametrize("frame", [wire.frame(wire.PING, 0, 0, b"flooding"), wire.settings({wire.SETTINGS_ENABLE_PUSH: 0})],
                         ids=["ping", "settings"])
async def test_control_frame_floods_queue_boundedly_and_every_one_is_answered(served: Served, frame: bytes) -> None:
    """8 MB of frames that each ask for an ack, from a client that reads nothing meanwhile: the acks wait in
    the transport's buffer until its high-water mark, then the server stops reading; none is lost."""
    client = await served.connect()
    count = (8 << 20) // len(frame)
    client.send(frame * count)
    peak = 0
    for _ in range(50):
        await asyncio.sleep(0.01)
        for connection in served.server.connections:
            assert connection.transport is not None
            peak = max(peak, connection.transport.get_write_buffer_size())
    assert peak < 1 << 20  # an unbounded queue would hold megabytes here
    expected = count + (frame[3] == wire.SETTINGS)  # and the ack of the SETTINGS that opened the connection
    acks, pending = 0, b""
    while acks < expected:
        pending += await asyncio.wait_for(client.reader.read(1 << 20), 5)
        pos = 0
        while len(pending) - pos >= 9:
            hi, lo, kind, flags, _ = wire.FRAME_HEADER.unpack_from(pending, pos)
            if len(pending) - pos - 9 < (hi << 16 | lo):
                break
            acks += kind == frame[3] and flags == wire.ACK
            pos += 9 + (hi << 16 | lo)
        pending = pending[pos:]
    assert acks == expected
    await served.still_serves()


# -- GOAWAY from the client -------------------------------------------------------------------------

async def test_client_goaway_lets_open_streams_finish_then_closes(served: Served) -> None:
    client = await served.connect()
    client.open(1)
    client.send(wire.frame(wire.DATA, 0, 1, Client.message(b"before")))
    await client.until(wire.DATA, 1)
    client.send(wire.goaway(0, wire.NO_ERROR))
    client.open(3)  # past its own GOAWAY the client should open nothing; if it does, the stream is refused
    assert await client.until(wire.RST_STREAM, 3) == (0, struct.pack(">I", wire.REFUSED_STREAM))
    client.send(wire.frame(wire.DATA, wire.END_STREAM, 1, Client.message(b"after")))
    messages, trailers, _ = await client.response(1)
    assert messages == [b"after", b"bye"] and trailers[b"grpc-status"] == b"0"
    assert (await client.goaway())[1] == wire.NO_ERROR  # its last stream ended: the server's own GOAWAY, then EOF
    client.writer.close()
    for _ in range(100):
        if not served.server.connections:
            break
        await asyncio.sleep(0.01)
    assert not served.server.connections
    await served.still_serves()


async def test_client_goaway_with_an_error_and_no_streams_closes_at_once(served: Served) -> None:
    client = await served.connect()
    client.send(wire.goaway(0, wire.PROTOCOL_ERROR, b"bye"))
    assert (await client.goaway())[1] == wire.NO_ERROR
    await served.still_serves()
