"""Random HTTP/2 frame sequences against epp's native transport serving the real picker.

Used by tests/extproc/h2/test_fuzz_frames.py (a bounded, seeded run in the suite) and bench/fuzz_h2.py (the
long opt-in run). A sequence mixes what Envoy sends (ext_proc HEADERS, split header blocks, gRPC-framed
ProcessingRequests) with anything else a peer could put on the wire: every frame type with random flags,
stream ids and payloads, bad SETTINGS, window updates, resets, GOAWAYs and raw bytes that break framing.
The client sends it, then a PING, then closes its side. Invariants, checked by ``FrameFuzz.check``:

- the server logs no traceback (nor a transport error) and leaves no exception to its event loop;
- the connection ends in a GOAWAY or keeps working (the closing PING is acked) — it may do neither only when
  the client's own bytes stopped inside a frame, or the client said GOAWAY itself;
- the server closes the connection once the client has closed its side (nothing is kept);
- nothing stays held (no in-flight request, no admitted stream, no buffered body);
- a well-behaved gRPC client on a fresh connection still gets a request routed.
"""

from __future__ import annotations

import collections
import logging
import socket
import struct
import time
from typing import Any

import hpack
from hypothesis import strategies as st

from epp.extproc.h2 import wire
from tests.extproc.builders import CHAT_BODY, request_body, request_headers, set_headers
from tests.extproc.fuzz_inputs import any_message
from tests.extproc.test_fuzz_server import POOL, ThreadedPicker, settle

PROCESS = b"/envoy.service.ext_proc.v3.ExternalProcessor/Process"
GRPC_HEADERS = [(b":method", b"POST"), (b":scheme", b"http"), (b":path", PROCESS), (b":authority", b"epp"),
                (b"content-type", b"application/grpc"), (b"te", b"trailers"), (b"grpc-timeout", b"10S")]
END = b"fuzz-end"  # the closing PING's payload
Op = tuple[Any, ...]

stream_ids = st.sampled_from([1, 3, 0, 2, 4, 2**31 - 1, "next", "last"])  # "next"/"last": resolved as the client goes
header_flags = st.sets(st.sampled_from([wire.END_STREAM, wire.END_HEADERS, wire.PADDED, wire.PRIORITY_FLAG])).map(sum)
settings_ids = st.one_of(st.integers(1, 6), st.integers(0, 0xFFFF))
settings_values = st.one_of(st.sampled_from([0, 1, 2, 16_383, 16_384, 2**24 - 1, 2**24, 2**31 - 1, 2**31, 2**32 - 1]),
                            st.integers(0, 2**32 - 1))
messages = any_message().map(lambda m: m.SerializeToString())
# What a conforming client (Envoy) sends, so sequences get past their first frame and reach the deeper states.
valid_settings = st.lists(st.one_of(
    st.tuples(st.just(wire.SETTINGS_INITIAL_WINDOW_SIZE), st.sampled_from([0, 1, 100, 65_535, 2**31 - 1])),
    st.tuples(st.just(wire.SETTINGS_MAX_FRAME_SIZE), st.sampled_from([16_384, 65_536, 2**24 - 1])),
    st.tuples(st.sampled_from([wire.SETTINGS_HEADER_TABLE_SIZE, wire.SETTINGS_MAX_CONCURRENT_STREAMS]), st.integers(0, 2**20)),
    st.tuples(st.just(wire.SETTINGS_ENABLE_PUSH), st.integers(0, 1)),
), max_size=3)
valid_ops = st.one_of(
    st.tuples(st.just("open"), st.just("next"), st.sets(st.sampled_from([wire.END_STREAM, wire.PADDED, wire.PRIORITY_FLAG]))
              .map(lambda flags: sum(flags) | wire.END_HEADERS)),
    st.tuples(st.just("split-open"), st.just("next"), st.integers(0, 60), st.booleans()),
    st.tuples(st.just("message"), st.just("last"), st.booleans(), messages, st.integers(0, 3)),
    st.tuples(st.just("settings"), valid_settings),
    st.tuples(st.just("window"), st.sampled_from([0, "last"]), st.integers(1, 2**20)),
    st.tuples(st.just("rst"), st.just("last"), st.sampled_from([wire.NO_ERROR, wire.CANCEL])),
    st.tuples(st.just("ping"), st.binary(min_size=8, max_size=8), st.just(False)),
)
hostile_ops = st.one_of(
    st.tuples(st.just("open"), stream_ids, header_flags),
    st.tuples(st.just("split-open"), stream_ids, st.integers(0, 60), st.booleans()),
    st.tuples(st.just("message"), stream_ids, st.booleans(), messages, st.integers(0, 3)),
    st.tuples(st.just("settings"), st.lists(st.tuples(settings_ids, settings_values), max_size=4)),
    st.tuples(st.just("window"), stream_ids, st.one_of(st.just(0), st.just(2**31 - 1), st.integers(0, 2**32 - 1))),
    st.tuples(st.just("rst"), stream_ids, st.integers(0, 13)),
    st.tuples(st.just("ping"), st.binary(min_size=8, max_size=8), st.booleans()),
    st.tuples(st.just("goaway"), st.integers(0, 9), st.integers(0, 13)),
    st.tuples(st.just("frame"), st.integers(0, 12), st.integers(0, 255), stream_ids, st.binary(max_size=64)),
    st.tuples(st.just("bytes"), st.binary(min_size=1, max_size=24)),
)
sequences = st.lists(st.one_of(valid_ops, valid_ops, valid_ops, hostile_ops), min_size=1, max_size=24)


class Renderer:
    """Turns ops into bytes; header blocks come from one encoder so its dynamic table stays in step."""

    def __init__(self) -> None:
        self.encoder = hpack.Encoder()
        self.last = 0  # the last stream id the client opened

    def sid(self, spec: int | str) -> int:
        if spec == "next":
            self.last += 2 if self.last else 1
            return self.last
        if spec == "last":
            return self.last or 1
        assert isinstance(spec, int)
        return spec

    def render(self, op: Op) -> bytes:
        kind = op[0]
        if kind == "open":
            _, sid, flags = op
            block = self.encoder.encode(GRPC_HEADERS)
            if flags & wire.PRIORITY_FLAG:
                block = b"\x00\x00\x00\x00\x10" + block
            if flags & wire.PADDED:
                block = b"\x03" + block + b"\x00\x00\x00"
            return wire.frame(wire.HEADERS, flags, self.sid(sid), block)
        if kind == "split-open":
            _, sid, cut, end_stream = op
            block, sid = self.encoder.encode(GRPC_HEADERS), self.sid(sid)
            return (wire.frame(wire.HEADERS, wire.END_STREAM if end_stream else 0, sid, block[:cut])
                    + wire.frame(wire.CONTINUATION, wire.END_HEADERS, sid, block[cut:]))
        if kind == "message":
            _, sid, end_stream, body, pieces = op
            data, sid = wire.GRPC_PREFIX.pack(0, len(body)) + body, self.sid(sid)
            step = max(1, len(data) // (pieces + 1))
            chunks = [data[i : i + step] for i in range(0, len(data), step)]
            return b"".join(wire.frame(wire.DATA, wire.END_STREAM if end_stream and i == len(chunks) - 1 else 0, sid, chunk)
                            for i, chunk in enumerate(chunks))
        if kind == "settings":
            return wire.frame(wire.SETTINGS, 0, 0, b"".join(struct.pack(">HI", k, v) for k, v in op[1]))
        if kind == "window":
            return wire.frame(wire.WINDOW_UPDATE, 0, self.sid(op[1]), struct.pack(">I", op[2]))
        if kind == "rst":
            return wire.rst_stream(self.sid(op[1]), op[2])
        if kind == "ping":
            return wire.frame(wire.PING, wire.ACK if op[2] else 0, 0, op[1])
        if kind == "goaway":
            return wire.goaway(op[1], op[2])
        if kind == "frame":
            _, frame_type, flags, sid, payload = op
            return wire.frame(frame_type, flags, self.sid(sid), payload)
        return bytes(op[1])


def ends_on_a_frame(data: bytes) -> bool:
    """Whether ``data`` (after the preface) is whole frames, so a PING appended to it is read as a PING."""
    pos = 0
    while len(data) - pos >= 9:
        hi, lo, *_ = wire.FRAME_HEADER.unpack_from(data, pos)
        pos += 9 + (hi << 16 | lo)
    return pos == len(data)


class _Errors(logging.Handler):
    """Crashes: a logged traceback anywhere in epp, or an error from the transport itself. (The picker logs
    some client mistakes at error level on purpose, e.g. an ext_proc body mode that hides the body.)"""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.exc_info or record.name.startswith("epp.extproc.h2"):
            self.records.append(self.format(record))


class FrameFuzz:
    """The picker on the native transport in a background thread, and the checks run after each sequence."""

    def __init__(self) -> None:
        self.picker = ThreadedPicker(native=True)
        self.unhandled: list[dict[str, Any]] = []
        self.picker.loop.call_soon_threadsafe(self.picker.loop.set_exception_handler,
                                              lambda _, context: self.unhandled.append(context))
        self.errors = _Errors()
        logging.getLogger("epp").addHandler(self.errors)
        self.outcomes: collections.Counter[str] = collections.Counter()

    def close(self) -> None:
        logging.getLogger("epp").removeHandler(self.errors)
        self.picker.close()

    def check(self, sequence: list[Op]) -> None:
        self.errors.records.clear()
        self.unhandled.clear()
        renderer = Renderer()
        body = wire.settings({}) + b"".join(renderer.render(op) for op in sequence)
        outcome = self._exchange(wire.PREFACE + body + wire.frame(wire.PING, 0, 0, END))
        self.outcomes[outcome] += 1
        said_goaway = any(op[0] == "goaway" or (op[0] == "frame" and op[1] == wire.GOAWAY) for op in sequence)
        if outcome == "silent":
            assert not ends_on_a_frame(body) or said_goaway, "the server neither answered the PING nor sent a GOAWAY"
        assert not self.errors.records, self.errors.records[:3]
        assert not self.unhandled, self.unhandled[:3]
        self.still_routes()
        settle(self.picker)

    def _exchange(self, data: bytes) -> str:
        """Send ``data``, close our side, read to the server's close: "acked", "goaway <code>" or "silent"."""
        received = bytearray()
        with socket.create_connection(("127.0.0.1", self.picker.server.port), timeout=5) as sock:
            try:
                sock.sendall(data)
                sock.shutdown(socket.SHUT_WR)
            except OSError:  # it hung up early: after its GOAWAY (read below), or at once after the client's
                pass
            deadline = time.monotonic() + 5
            try:
                while chunk := sock.recv(65536):
                    received += chunk
                    assert time.monotonic() < deadline, "the server kept the connection open after the client closed"
            except ConnectionResetError:
                pass  # its lingering close gave up on us: what it sent before is in ``received``
            except TimeoutError:
                raise AssertionError("the server kept the connection open after the client closed") from None
        pos, goaway = 0, ""
        while len(received) - pos >= 9:
            hi, lo, kind, flags, _ = wire.FRAME_HEADER.unpack_from(received, pos)
            payload = bytes(received[pos + 9 : pos + 9 + (hi << 16 | lo)])
            pos += 9 + (hi << 16 | lo)
            if kind == wire.PING and flags & wire.ACK and payload == END:
                return "acked"
            if kind == wire.GOAWAY and len(payload) >= 8:
                goaway = f"goaway {struct.unpack('>I', payload[4:8])[0]}"
        return goaway or "silent"

    def still_routes(self) -> None:
        code, replies = self.picker.exchange([request_headers(), request_body(CHAT_BODY, eos=True)])
        assert code.name == "OK", code
        assert set_headers(replies[0].request_headers.response)["x-gateway-destination-endpoint"] in POOL

