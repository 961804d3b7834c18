"""One HTTP/2 connection serving gRPC calls whose handlers answer synchronously.

Why not grpcio: every gRPC message through grpc.aio costs an asyncio future, a hop from grpc's poller
thread and a write completion; an ext_proc request is 6–14 messages, so that machinery, not the picker,
was most of epp's CPU (bench/RESULTS.md). The picker's per-message work is synchronous (a message in, its
replies out), so here each ``data_received`` parses every complete frame, hands each gRPC message to its
call and writes all replies, window updates and trailers back with one ``transport.write``: no task,
future or thread per message.

Scope: a gRPC server (no push, no priorities, identity encoding only), TLS left to the transport.
Flow control: the picker advertises the largest stream window and tops the connection window up as data
is consumed; outbound DATA respects the peer's windows and frame size, parking the excess per stream
until WINDOW_UPDATE. Connection errors send GOAWAY and close; stream errors end that call only.

Abuse bounds (docs/hardening.md, "The native transport under abuse"; tests/extproc/h2/test_abuse.py): a
header block may collect at most ``MAX_HEADER_LIST`` bytes across CONTINUATION frames and decode to at most
that many (advertised as SETTINGS_MAX_HEADER_LIST_SIZE); streams reset by the client within a second of
opening drain the connection once they are most of its streams (Envoy's own rapid-reset rule); replies
parked for a window that stays shut, and writes the client does not read, end after ``stall_timeout``;
frame lengths, SETTINGS values and window increments are checked as RFC 9113 asks.
"""

from __future__ import annotations

import asyncio
import logging
import struct
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Protocol, cast

import hpack

from epp.extproc.h2 import wire

log = logging.getLogger(__name__)

GRPC_INVALID_ARGUMENT, GRPC_INTERNAL, GRPC_RESOURCE_EXHAUSTED, GRPC_UNIMPLEMENTED = 3, 13, 8, 12
_RECV_TOP_UP = wire.MAX_WINDOW // 2  # top the connection window up once this much was consumed
_MAX_FRAME = 1 << 20  # what we accept per frame: fewer, larger frames mean less per-frame work
DEFAULT_MAX_STREAMS = 4096
MAX_HEADER_LIST = 65_536  # SETTINGS_MAX_HEADER_LIST_SIZE: hpack's decoder default; gRPC request headers are ~200 B
# Rapid reset (CVE-2023-44487): Envoy's rule for its own downstream connections (runtime keys
# overload.premature_reset_total_stream_count = 500, overload.premature_reset_min_stream_lifetime_seconds = 1):
# once 500 streams have closed, more than half of them reset by the client within 1 s of opening drains the connection.
RESET_CHECK_STREAMS = 500
PREMATURE_RESET_SECONDS = 1.0
DEFAULT_STALL_TIMEOUT = 30.0  # seconds a reply may wait for a window, or a write for the client to read
LINGER_SECONDS = 1.0  # after a connection error: how long the client's further input is read and dropped
_PING, _GOAWAY_MIN, _PRIORITY, _RST_WINDOW = 8, 8, 5, 4  # fixed frame payload lengths (RFC 9113 §6)


class CallError(Exception):
    """Ends one call with a gRPC status (the connection and other calls carry on)."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class Call(Protocol):
    """One gRPC call. ``message``/``half_closed`` return serialized replies (or raise ``CallError``);
    ``message`` may instead return an awaitable of them (an answer that waits, e.g. for flow control):
    it is awaited in a task, cancelled if the stream ends first. After ``half_closed`` the call ends
    with status OK. ``closed`` is called exactly once, however it ended."""

    def message(self, data: memoryview) -> Sequence[bytes] | Awaitable[Sequence[bytes]]: ...

    def half_closed(self) -> Sequence[bytes]: ...

    def closed(self) -> None: ...


Router = Callable[[bytes], "Call | None"]  # :path → a new call, or None for an unknown method


class _Stream:
    __slots__ = ("id", "call", "send_window", "pending", "trailers", "inbox", "need", "replied", "remote_done", "later",
                 "opened", "blocked_at")

    def __init__(self, stream_id: int, call: Call, send_window: int) -> None:
        self.id = stream_id
        self.call = call
        self.send_window = send_window
        self.pending = bytearray()  # DATA payload waiting for flow-control window
        self.trailers: bytes | None = None  # sent once ``pending`` drains
        self.inbox = bytearray()  # an incomplete gRPC message
        self.need = 5  # bytes ``inbox`` must hold before the next message can be complete
        self.replied = False  # response HEADERS sent
        self.remote_done = False  # client sent END_STREAM
        self.later: asyncio.Task[None] | None = None  # an answer the call is still waiting for
        self.opened = time.monotonic()  # a client reset soon after this is premature (rapid reset)
        self.blocked_at = 0.0  # when ``pending`` last started waiting for a window


class ConnectionError_(Exception):
    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


class H2Connection(asyncio.Protocol):
    """asyncio protocol for one client connection; ``on_close`` is told when it is gone."""

    def __init__(self, router: Router, max_message_bytes: int, on_close: Callable[[H2Connection], None],
                 max_streams: int = DEFAULT_MAX_STREAMS, stall_timeout: float = DEFAULT_STALL_TIMEOUT) -> None:
        self.router = router
        self.max_streams = max_streams
        self.stall_timeout = stall_timeout
        self.max_message_bytes = max_message_bytes
        self._on_close = on_close
        self.transport: asyncio.Transport | None = None
        self.streams: dict[int, _Stream] = {}
        self.draining = False  # no new streams: we or the client said GOAWAY
        self._goaway_sent = False
        self._buf = bytearray()
        self._out: list[bytes | memoryview] = []
        self._preface = False
        self._decoder = hpack.Decoder(max_header_list_size=MAX_HEADER_LIST)
        self._header_block: tuple[int, int, bytearray] | None = None  # (stream id, flags, fragments)
        self._last_stream = 0
        self._send_window = wire.DEFAULT_WINDOW
        self._initial_send_window = wire.DEFAULT_WINDOW
        self._max_send_frame = wire.DEFAULT_MAX_FRAME
        self._recv_consumed = 0
        self._blocked: dict[int, _Stream] = {}
        self._closed_streams = 0
        self._premature_resets = 0
        self._stall_timer: asyncio.TimerHandle | None = None  # the client stopped reading our writes
        self._blocked_timer: asyncio.TimerHandle | None = None  # replies wait for a window
        self._linger_timer: asyncio.TimerHandle | None = None  # set once a connection error was answered

    # -- asyncio.Protocol --------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's transports are not asyncio subclasses
        self.transport.write(
            wire.settings({
                wire.SETTINGS_ENABLE_PUSH: 0,
                wire.SETTINGS_MAX_CONCURRENT_STREAMS: self.max_streams,
                wire.SETTINGS_INITIAL_WINDOW_SIZE: wire.MAX_WINDOW,
                wire.SETTINGS_MAX_FRAME_SIZE: _MAX_FRAME,
                wire.SETTINGS_MAX_HEADER_LIST_SIZE: MAX_HEADER_LIST,
            })
            + wire.window_update(0, wire.MAX_WINDOW - wire.DEFAULT_WINDOW)
        )

    def data_received(self, data: bytes) -> None:
        if self._linger_timer is not None:
            return  # the GOAWAY is out; what the client still sends is dropped
        buf = self._buf
        buf += data
        try:
            if not self._preface:
                if len(buf) < len(wire.PREFACE):
                    return
                if not buf.startswith(wire.PREFACE):
                    raise ConnectionError_(wire.PROTOCOL_ERROR, "not an HTTP/2 connection preface")
                del buf[: len(wire.PREFACE)]
                self._preface = True
            self._frames()
        except ConnectionError_ as exc:
            self._close_with(exc)
            return
        except Exception as exc:  # a transport bug ends this connection, never the server
            log.exception("internal error in the ext_proc connection")
            self._close_with(ConnectionError_(wire.INTERNAL_ERROR, f"internal error: {type(exc).__name__}"))
            return
        self._flush()

    def _close_with(self, exc: ConnectionError_) -> None:
        log.warning("closing ext_proc connection: %s", exc)
        self._goaway_sent = True
        self._out.append(wire.goaway(self._last_stream, exc.code, str(exc).encode()))
        self._abort_all()
        self._shut()

    def _shut(self) -> None:
        """Close once our GOAWAY is written."""
        self._flush()
        transport = self.transport
        assert transport is not None
        if transport.is_closing():
            return
        if transport.can_write_eof():
            # Closing a socket with unread input makes the kernel send a TCP reset, which can destroy the
            # GOAWAY before the client reads it: shut our side, drop its input until it closes (eof_received
            # then closes ours), and give up after LINGER_SECONDS.
            self._linger_timer = asyncio.get_running_loop().call_later(LINGER_SECONDS, transport.abort)
            try:
                transport.write_eof()
            except OSError:  # the client is gone already
                transport.abort()
        else:  # TLS: no half-close
            transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        for timer in (self._stall_timer, self._blocked_timer, self._linger_timer):
            if timer is not None:
                timer.cancel()
        self._abort_all()
        self._on_close(self)

    def pause_writing(self) -> None:
        """The client reads slower than we write: stop reading it (its requests make our replies) and give it
        ``stall_timeout`` to catch up, so a peer that never reads holds neither memory nor the connection."""
        if self.transport is not None:
            self.transport.pause_reading()
            if self._stall_timer is None:
                self._stall_timer = asyncio.get_running_loop().call_later(self.stall_timeout, self._write_stalled)

    def resume_writing(self) -> None:
        if self._stall_timer is not None:
            self._stall_timer.cancel()
            self._stall_timer = None
        if self.transport is not None:
            self.transport.resume_reading()

    def _write_stalled(self) -> None:
        log.warning("closing ext_proc connection: the client read nothing for %.0f s", self.stall_timeout)
        self._abort_all()
        if self.transport is not None:
            self.transport.abort()  # a GOAWAY could not be written either

    # -- shutdown ----------------------------------------------------------------------------------
    def drain(self, code: int = wire.NO_ERROR, reason: bytes = b"") -> None:
        """Refuse new streams (GOAWAY with ``code``), let open ones finish; close at once when none are open."""
        if self._goaway_sent or self.transport is None:
            return
        self._goaway_sent = self.draining = True
        self._out.append(wire.goaway(self._last_stream, code, reason))
        if self.streams:
            self._flush()
        else:
            self._shut()

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    # -- inbound -----------------------------------------------------------------------------------
    def _frames(self) -> None:
        # Frames are handed on as views of the receive buffer; a handler (or a traceback) may still hold
        # one afterwards, so the buffer is replaced by its unparsed tail, never resized in place.
        buf = self._buf
        view = memoryview(buf)
        pos, end = 0, len(buf)
        try:
            while end - pos >= 9 and self._linger_timer is None:
                hi, lo, kind, flags, sid = wire.FRAME_HEADER.unpack_from(buf, pos)
                length = hi << 16 | lo
                if length > _MAX_FRAME:
                    raise ConnectionError_(wire.FRAME_SIZE_ERROR, f"frame of {length} bytes")
                if end - pos - 9 < length:
                    break
                start = pos + 9
                pos = start + length
                self._frame(kind, flags, sid & 0x7FFFFFFF, view[start:pos])
        finally:
            self._buf = buf[pos:] if pos < end else bytearray()

    def _frame(self, kind: int, flags: int, sid: int, payload: memoryview) -> None:
        if self._header_block is not None and kind != wire.CONTINUATION:
            raise ConnectionError_(wire.PROTOCOL_ERROR, "header block interrupted")
        if kind == wire.DATA:
            self._data(flags, sid, payload)
        elif kind == wire.HEADERS:
            self._headers(flags, sid, payload)
        elif kind == wire.CONTINUATION:
            self._continuation(flags, sid, payload)
        elif kind == wire.RST_STREAM:
            self._rst_stream(sid, payload)
        elif kind == wire.SETTINGS:
            if sid:
                raise ConnectionError_(wire.PROTOCOL_ERROR, "SETTINGS on a stream")
            if not flags & wire.ACK:
                self._settings(payload)
            elif payload:
                raise ConnectionError_(wire.FRAME_SIZE_ERROR, "SETTINGS ack with a payload")
        elif kind == wire.WINDOW_UPDATE:
            self._window_update(sid, payload)
        elif kind == wire.PING:
            if sid:
                raise ConnectionError_(wire.PROTOCOL_ERROR, "PING on a stream")
            if len(payload) != _PING:
                raise ConnectionError_(wire.FRAME_SIZE_ERROR, f"PING of {len(payload)} bytes")
            if not flags & wire.ACK:  # acks queue in the transport; past its high-water mark reading pauses
                self._out.append(wire.frame(wire.PING, wire.ACK, 0, bytes(payload)))
        elif kind == wire.GOAWAY:
            if sid:
                raise ConnectionError_(wire.PROTOCOL_ERROR, "GOAWAY on a stream")
            if len(payload) < _GOAWAY_MIN:
                raise ConnectionError_(wire.FRAME_SIZE_ERROR, f"GOAWAY of {len(payload)} bytes")
            self.draining = True  # the client opens no more streams; the open ones finish, then we close
            if not self.streams:
                self.drain()
        elif kind == wire.PUSH_PROMISE:
            raise ConnectionError_(wire.PROTOCOL_ERROR, "clients cannot push")
        elif kind == wire.PRIORITY:
            if not sid:
                raise ConnectionError_(wire.PROTOCOL_ERROR, "PRIORITY on stream 0")
            if len(payload) != _PRIORITY:
                self._stream_error(sid, wire.FRAME_SIZE_ERROR, f"PRIORITY of {len(payload)} bytes")
        # Priorities and unknown frame types are ignored, as RFC 9113 asks.

    def _stream_error(self, sid: int, code: int, message: str) -> None:
        """RST_STREAM ``sid`` with ``code``; its call (if open) ends as cancelled."""
        self._out.append(wire.rst_stream(sid, code))
        stream = self.streams.get(sid)
        if stream is not None:
            log.warning("resetting ext_proc stream %d: %s", sid, message)
            self._end(stream)

    def _rst_stream(self, sid: int, payload: memoryview) -> None:
        if len(payload) != _RST_WINDOW:
            raise ConnectionError_(wire.FRAME_SIZE_ERROR, f"RST_STREAM of {len(payload)} bytes")
        if not sid or sid > self._last_stream:
            raise ConnectionError_(wire.PROTOCOL_ERROR, f"RST_STREAM on idle stream {sid}")
        stream = self.streams.get(sid)
        if stream is None:
            return
        self._end(stream)
        # Premature: reset within a second and before any answer. Envoy's ext_proc client resets every stream it
        # has its answers from rather than waiting for the trailers, so a reset after a reply is ordinary traffic.
        if not stream.replied and time.monotonic() - stream.opened < PREMATURE_RESET_SECONDS:
            self._premature_resets += 1
            if (self._closed_streams >= RESET_CHECK_STREAMS and 2 * self._premature_resets > self._closed_streams
                    and not self._goaway_sent):
                # A drain, not an abort: behind Envoy the resets are its downstream clients' (an attack laundered
                # through the gateway); the gateway's other calls on this connection finish, and it reconnects.
                log.warning("draining ext_proc connection: %d of %d streams reset by the client within a second "
                            "(rapid reset)", self._premature_resets, self._closed_streams)
                self.drain(wire.ENHANCE_YOUR_CALM, b"rapid reset")

    def _unpadded(self, flags: int, payload: memoryview) -> memoryview:
        if not flags & wire.PADDED:
            return payload
        if not payload or payload[0] >= len(payload):
            raise ConnectionError_(wire.PROTOCOL_ERROR, "bad padding")
        return payload[1 : len(payload) - payload[0]]

    def _data(self, flags: int, sid: int, payload: memoryview) -> None:
        self._recv_consumed += len(payload)
        if self._recv_consumed >= _RECV_TOP_UP:
            self._out.append(wire.window_update(0, self._recv_consumed))
            self._recv_consumed = 0
        stream = self.streams.get(sid)
        if stream is None:
            if sid == 0 or sid > self._last_stream:
                raise ConnectionError_(wire.PROTOCOL_ERROR, f"DATA on idle stream {sid}")
            return  # a stream we already ended: the client had not seen it yet
        data = self._unpadded(flags, payload)
        try:
            if data:
                inbox = stream.inbox
                if inbox:  # a message spanning frames: parse from the stream's own buffer once it is complete
                    inbox += data
                    if len(inbox) >= stream.need:
                        consumed = self._messages(stream, memoryview(inbox))
                        stream.inbox = inbox[consumed:]  # replaced, never resized: views may outlive the call
                else:
                    consumed = self._messages(stream, data)
                    if consumed < len(data):
                        inbox += data[consumed:]
            if flags & wire.END_STREAM and sid in self.streams:
                stream.remote_done = True
                if stream.inbox:
                    raise CallError(GRPC_INTERNAL, "stream ended inside a message")
                self._send(stream, stream.call.half_closed())
                self._finish(stream, wire.TRAILERS_OK)
        except CallError as exc:
            self._fail(stream, exc)
        except Exception:  # a handler bug ends its own call, never the connection
            log.exception("internal error in the call on stream %d", sid)
            self._fail(stream, CallError(GRPC_INTERNAL, "internal error in the endpoint picker"))

    def _messages(self, stream: _Stream, data: memoryview) -> int:
        """Hand every complete gRPC message in ``data`` to the call; returns the bytes consumed and sets
        ``stream.need``, the buffered length at which the next message is complete."""
        pos, n = 0, len(data)
        stream.need = 5
        while n - pos >= 5 and stream.id in self.streams:
            compressed, length = wire.GRPC_PREFIX.unpack_from(data, pos)
            if compressed:
                raise CallError(GRPC_UNIMPLEMENTED, "compressed messages are not supported")
            if length > self.max_message_bytes:
                raise CallError(GRPC_RESOURCE_EXHAUSTED, f"message of {length} bytes exceeds {self.max_message_bytes}")
            if n - pos - 5 < length:
                stream.need = 5 + length
                break
            start = pos + 5
            pos = start + length
            replies = stream.call.message(data[start:pos])
            if type(replies) is list:
                self._send(stream, replies)
            else:
                stream.later = asyncio.get_running_loop().create_task(self._answer_later(stream, replies))  # type: ignore[arg-type]
        return pos

    async def _answer_later(self, stream: _Stream, replies: Awaitable[Sequence[bytes]]) -> None:
        try:
            out = await replies
        except CallError as exc:
            self._fail(stream, exc)
        except Exception:
            log.exception("internal error in the call on stream %d", stream.id)
            self._fail(stream, CallError(GRPC_INTERNAL, "internal error in the endpoint picker"))
        else:
            if stream.id in self.streams:
                self._send(stream, out)
        finally:
            stream.later = None
        self._flush()

    def _headers(self, flags: int, sid: int, payload: memoryview) -> None:
        block = self._unpadded(flags, payload)
        if flags & wire.PRIORITY_FLAG:
            block = block[5:]
        if len(block) > MAX_HEADER_LIST:
            raise ConnectionError_(wire.ENHANCE_YOUR_CALM, f"header block over {MAX_HEADER_LIST} bytes")
        if flags & wire.END_HEADERS:
            self._header_block_done(sid, flags, bytes(block))
        else:
            self._header_block = (sid, flags, bytearray(block))

    def _continuation(self, flags: int, sid: int, payload: memoryview) -> None:
        if self._header_block is None or self._header_block[0] != sid:
            raise ConnectionError_(wire.PROTOCOL_ERROR, "unexpected CONTINUATION")
        block = self._header_block[2]
        if len(block) + len(payload) > MAX_HEADER_LIST:  # CONTINUATION flood (CVE-2024-27316 and kin)
            raise ConnectionError_(wire.ENHANCE_YOUR_CALM, f"header block over {MAX_HEADER_LIST} bytes")
        block.extend(payload)
        if flags & wire.END_HEADERS:
            sid, first_flags, block = self._header_block
            self._header_block = None
            self._header_block_done(sid, first_flags, bytes(block))

    def _header_block_done(self, sid: int, flags: int, block: bytes) -> None:
        try:
            headers = self._decoder.decode(block, raw=True)
        except hpack.OversizedHeaderListError:
            raise ConnectionError_(wire.ENHANCE_YOUR_CALM, f"header list over {MAX_HEADER_LIST} bytes") from None
        except Exception as exc:  # hpack raises several types; the connection state is lost either way
            raise ConnectionError_(wire.COMPRESSION_ERROR, f"bad header block: {exc}") from None
        stream = self.streams.get(sid)
        if stream is not None:  # trailers from the client: the same as END_STREAM
            self._data(wire.END_STREAM, sid, memoryview(b""))
            return
        if sid % 2 == 0 or sid <= self._last_stream:
            raise ConnectionError_(wire.PROTOCOL_ERROR, f"HEADERS opening stream {sid}")
        self._last_stream = sid
        if self.draining or len(self.streams) >= self.max_streams:
            self._out.append(wire.rst_stream(sid, wire.REFUSED_STREAM))
            return
        path = next((v for k, v in headers if k == b":path"), b"")
        call = self.router(bytes(path))
        if call is None:
            self._out.append(wire.frame(wire.HEADERS, wire.END_HEADERS | wire.END_STREAM, sid,
                                        wire.RESPONSE_HEADERS + wire.grpc_status(GRPC_UNIMPLEMENTED, f"unknown method {path.decode('latin-1')}")))
            return
        stream = _Stream(sid, call, self._initial_send_window)
        self.streams[sid] = stream
        if flags & wire.END_STREAM:
            self._data(wire.END_STREAM, sid, memoryview(b""))

    def _settings(self, payload: memoryview) -> None:
        if len(payload) % 6:
            raise ConnectionError_(wire.FRAME_SIZE_ERROR, "SETTINGS length")
        for key, value in struct.iter_unpack(">HI", payload):
            if key == wire.SETTINGS_INITIAL_WINDOW_SIZE:
                if value > wire.MAX_WINDOW:
                    raise ConnectionError_(wire.FLOW_CONTROL_ERROR, "initial window too large")
                delta = value - self._initial_send_window
                self._initial_send_window = value
                for stream in self.streams.values():
                    stream.send_window += delta
                    if stream.send_window > wire.MAX_WINDOW:
                        raise ConnectionError_(wire.FLOW_CONTROL_ERROR, f"stream {stream.id} window over 2^31-1")
            elif key == wire.SETTINGS_MAX_FRAME_SIZE:
                if not wire.DEFAULT_MAX_FRAME <= value <= wire.MAX_FRAME_LIMIT:
                    raise ConnectionError_(wire.PROTOCOL_ERROR, f"SETTINGS_MAX_FRAME_SIZE {value}")
                self._max_send_frame = value
            elif key == wire.SETTINGS_ENABLE_PUSH and value > 1:
                raise ConnectionError_(wire.PROTOCOL_ERROR, f"SETTINGS_ENABLE_PUSH {value}")
        self._out.append(wire.frame(wire.SETTINGS, wire.ACK, 0))
        self._unblock()

    def _window_update(self, sid: int, payload: memoryview) -> None:
        if len(payload) != _RST_WINDOW:
            raise ConnectionError_(wire.FRAME_SIZE_ERROR, f"WINDOW_UPDATE of {len(payload)} bytes")
        (increment,) = struct.unpack(">I", payload)
        increment &= 0x7FFFFFFF
        if sid == 0:
            if not increment:
                raise ConnectionError_(wire.PROTOCOL_ERROR, "WINDOW_UPDATE of 0")
            self._send_window += increment
            if self._send_window > wire.MAX_WINDOW:
                raise ConnectionError_(wire.FLOW_CONTROL_ERROR, "connection window over 2^31-1")
        else:
            if sid > self._last_stream:
                raise ConnectionError_(wire.PROTOCOL_ERROR, f"WINDOW_UPDATE on idle stream {sid}")
            stream = self.streams.get(sid)
            if stream is None:
                return
            if not increment:
                self._stream_error(sid, wire.PROTOCOL_ERROR, "WINDOW_UPDATE of 0")
                return
            stream.send_window += increment
            if stream.send_window > wire.MAX_WINDOW:
                self._stream_error(sid, wire.FLOW_CONTROL_ERROR, "stream window over 2^31-1")
                return
        self._unblock()

    # -- outbound ----------------------------------------------------------------------------------
    def _send(self, stream: _Stream, replies: Sequence[bytes]) -> None:
        if not replies:
            return
        out = self._out
        if not stream.replied:
            stream.replied = True
            out.append(wire.frame(wire.HEADERS, wire.END_HEADERS, stream.id, wire.RESPONSE_HEADERS))
        prefix = wire.GRPC_PREFIX.pack
        parts = [part for reply in replies for part in (prefix(0, len(reply)), reply)]
        total = sum(map(len, parts))
        if not stream.pending and total <= min(self._max_send_frame, self._send_window, stream.send_window):
            # The common case: one DATA frame, the replies written as they are (no join, no copy).
            out.append(wire.frame_header(wire.DATA, 0, stream.id, total))
            out.extend(parts)
            self._send_window -= total
            stream.send_window -= total
        elif stream.pending:
            stream.pending += b"".join(parts)
            self._check_parked(stream)
        else:
            self._write_data(stream, b"".join(parts))

    def _write_data(self, stream: _Stream, payload: bytes | bytearray) -> None:
        """Send what the windows allow now, in frames of at most the peer's frame size; park the rest.

        Frames are views of ``payload`` until the flush joins them; ``payload`` is never modified later
        (a parked remainder is a new buffer)."""
        allowed = min(len(payload), self._send_window, stream.send_window)
        out, limit, sid = self._out, self._max_send_frame, stream.id
        view = memoryview(payload)
        pos = 0
        while pos < allowed:
            n = min(limit, allowed - pos)
            out.append(wire.frame_header(wire.DATA, 0, sid, n))
            out.append(view[pos : pos + n])
            pos += n
        self._send_window -= allowed
        stream.send_window -= allowed
        if allowed < len(payload):
            stream.pending = bytearray(view[allowed:])
            if allowed or sid not in self._blocked:  # the window moved: the wait (re)starts now
                stream.blocked_at = time.monotonic()
            self._blocked[sid] = stream
            if self._blocked_timer is None:
                self._blocked_timer = asyncio.get_running_loop().call_later(self.stall_timeout, self._expire_blocked)
            self._check_parked(stream)
        else:
            stream.pending = bytearray()

    def _check_parked(self, stream: _Stream) -> None:
        """A client that keeps sending messages but never opens its window would park replies without end:
        past twice the message limit the call ends (its trailers are HEADERS, which need no window)."""
        if len(stream.pending) > 2 * self.max_message_bytes + _MAX_FRAME:
            self._fail(stream, CallError(GRPC_RESOURCE_EXHAUSTED, "replies wait for a flow-control window"))

    def _expire_blocked(self) -> None:
        """End the calls whose replies waited ``stall_timeout`` for a window (a slow or stuck reader)."""
        self._blocked_timer = None
        now = time.monotonic()
        for stream in list(self._blocked.values()):
            if now - stream.blocked_at >= self.stall_timeout:
                log.warning("ending ext_proc stream %d: its replies waited %.0f s for a flow-control window",
                            stream.id, self.stall_timeout)
                self._fail(stream, CallError(GRPC_RESOURCE_EXHAUSTED, "replies waited too long for a flow-control window"))
        if self._blocked:
            oldest = min(stream.blocked_at for stream in self._blocked.values())
            self._blocked_timer = asyncio.get_running_loop().call_later(
                max(0.0, oldest + self.stall_timeout - now), self._expire_blocked)
        self._flush()

    def _unblock(self) -> None:
        for sid, stream in list(self._blocked.items()):
            if self._send_window <= 0:
                return
            if stream.send_window <= 0:
                continue
            del self._blocked[sid]
            self._write_data(stream, stream.pending)
            if not stream.pending and stream.trailers is not None:
                self._trailers(stream, stream.trailers)

    def _finish(self, stream: _Stream, status_block: bytes) -> None:
        """End the call with ``status_block`` (after any parked data), and release it."""
        if stream.pending:
            stream.trailers = status_block
        else:
            self._trailers(stream, status_block)

    def _trailers(self, stream: _Stream, status_block: bytes) -> None:
        block = status_block if stream.replied else wire.RESPONSE_HEADERS + status_block
        self._out.append(wire.frame(wire.HEADERS, wire.END_HEADERS | wire.END_STREAM, stream.id, block))
        if not stream.remote_done:  # the client may still be sending: tell it to stop
            self._out.append(wire.rst_stream(stream.id, wire.NO_ERROR))
        self._end(stream)

    def _fail(self, stream: _Stream, error: CallError) -> None:
        if stream.id not in self.streams:
            return
        stream.pending = bytearray()
        self._blocked.pop(stream.id, None)
        self._trailers(stream, wire.grpc_status(error.code, error.message))

    def _end(self, stream: _Stream) -> None:
        if self.streams.pop(stream.id, None) is None:
            return
        self._closed_streams += 1
        self._blocked.pop(stream.id, None)
        if stream.later is not None:  # the answer is no longer wanted (e.g. a request still queued)
            stream.later.cancel()
        try:
            stream.call.closed()
        except Exception:
            log.exception("error closing call on stream %d", stream.id)
        if self.draining and not self.streams and self.transport is not None:
            if self._goaway_sent:
                self._flush()
                self.transport.close()
            else:  # the client said GOAWAY and its last stream ended: ours, then close
                self.drain()

    def _abort_all(self) -> None:
        for stream in list(self.streams.values()):
            self._end(stream)

    def _flush(self) -> None:
        if self._out and self.transport is not None and not self.transport.is_closing() and self._linger_timer is None:
            self.transport.writelines(self._out)  # one gathered write; no joined copy
        self._out.clear()
