"""The ``ExternalProcessor`` service: feeds each stream's messages to a fresh stream handler.

Kept thin on purpose: all decisions live in the handler (no gRPC runtime) — ``RequestStream`` + the
director for the picker, ``epp.bbr.stream.RouterStream`` for the body-based router. Two adapters run a
handler: ``NativeCall`` on epp's own HTTP/2 transport (``epp.extproc.h2``; every message answered
synchronously) and ``StreamServicer.Process`` on grpc.aio. A protocol violation or an unexpected error
ends that one stream with a gRPC status; the server and other streams carry on.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Generic, Protocol, TypeVar

import grpc
from google.protobuf.message import DecodeError
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as pb_grpc

from epp._util.logs import clip, fields
from epp.director import Director
from epp.extproc.h2.connection import GRPC_INTERNAL, GRPC_INVALID_ARGUMENT, CallError
from epp.extproc.collect import Deferred, ProtocolViolation
from epp.extproc.limits import StreamLimiter, overloaded
from epp.extproc.stream_metrics import StreamMetrics
from epp.extproc.stream import RequestStream
from epp.request import RequestError
from epp.request.body import DEFAULT_MAX_BODY_BYTES

GRPC_OK, GRPC_CANCELLED = 0, 1

log = logging.getLogger(__name__)

PROCESS_PATH = b"/envoy.service.ext_proc.v3.ExternalProcessor/Process"
_parse = pb.ProcessingRequest.FromString


class StreamHandler(Protocol):
    """One gRPC stream's state machine: ``handle`` returns the replies to one message, ``close`` runs once at the end."""

    request_id: str

    @property
    def over(self) -> bool:
        """The exchange is complete: no message Envoy may still send needs an answer."""
        ...

    def handle(self, message: pb.ProcessingRequest) -> list[pb.ProcessingResponse] | Deferred[Any]: ...

    def close(self) -> None: ...


H = TypeVar("H", bound=StreamHandler)


class StreamServicer(pb_grpc.ExternalProcessorServicer, Generic[H]):  # type: ignore[misc]  # xds-protos: untyped
    """Runs every ext_proc stream through its own handler from ``new_stream``.

    ``admit``/``refuse``/``release`` are hooks for servers that bound their streams (the picker):
    a stream ``admit`` turns away gets ``refuse``'s answer to its first message, and nothing else.
    """

    def __init__(self, new_stream: Callable[[], H]) -> None:
        self.new_stream = new_stream
        self.stream_metrics: StreamMetrics | None = None  # --enable-grpc-stream-metrics

    def admit(self, stream: H) -> RequestError | None:
        """None to serve ``stream``; otherwise the error to answer it with."""
        return None

    def refuse(self, stream: H, message: pb.ProcessingRequest, error: RequestError) -> list[pb.ProcessingResponse]:
        raise NotImplementedError("a servicer whose admit() refuses streams must say how to refuse them")

    def release(self, stream: H) -> None:
        """The stream ended, however it ended (called for refused streams too)."""

    def new_call(self) -> NativeCall[H]:
        """One stream on the native transport."""
        return NativeCall(self, self.new_stream())

    def answer(self, stream: H, refusal: RequestError | None,
               message: pb.ProcessingRequest) -> list[pb.ProcessingResponse] | Deferred[Any]:
        """The replies to one message: ``refuse``'s answer for a stream ``admit`` turned away, else the handler's."""
        if refusal is not None:
            return self.refuse(stream, message, refusal)
        return stream.handle(message)

    async def Process(  # noqa: N802  (gRPC method name)
        self,
        request_iterator: AsyncIterator[pb.ProcessingRequest],
        context: grpc.aio.ServicerContext[pb.ProcessingRequest, pb.ProcessingResponse],
    ) -> None:
        """grpc.aio path: ``context.read()``/``write()`` (measured a few per cent cheaper than an async
        iterator plus ``yield``, which wrap every message in generator machinery). The call ends with OK
        as soon as the handler is ``over`` (the response has ended), not at Envoy's half-close: Envoy
        proceeds without a processor that closed cleanly, and every completion grpc.aio waits for costs
        ~2 thread wakeups (bench/RESULTS.md, "What a request costs at c=1")."""
        stream = self.new_stream()
        refusal = self.admit(stream)
        code = grpc.StatusCode.UNKNOWN  # until the stream ends one of the known ways
        opened = self.stream_metrics.started() if self.stream_metrics is not None else 0.0
        try:
            while True:
                message = await context.read()
                if message is grpc.aio.EOF:  # type: ignore[attr-defined]  # grpc-stubs lacks aio.EOF
                    code = grpc.StatusCode.OK
                    return
                try:
                    replies, refusal = self.answer(stream, refusal, message), None
                    if isinstance(replies, Deferred):  # flow control holds the request: wait for its answer
                        replies = await replies.replies()
                except ProtocolViolation as exc:
                    _violation(stream, exc)
                    code = grpc.StatusCode.INVALID_ARGUMENT
                    await context.abort(code, f"ext_proc protocol violation: {exc}")
                except Exception:
                    _internal(stream)
                    code = grpc.StatusCode.INTERNAL
                    await context.abort(code, "internal error in the ext_proc server")
                for reply in replies:
                    await context.write(reply)
                if stream.over:  # nothing left to answer: end the call now instead of waiting for Envoy's close
                    code = grpc.StatusCode.OK
                    return
        except asyncio.CancelledError:
            code = grpc.StatusCode.CANCELLED
            raise
        finally:
            if self.stream_metrics is not None:
                self.stream_metrics.finished(opened, code)
            self.release(stream)
            try:
                stream.close()
            except Exception:  # never replace the stream's own outcome (e.g. a CancelledError) with this
                rid = clip(stream.request_id or "-")
                log.exception("internal error closing ext_proc stream (request id=%s)", rid, extra=fields(request_id=rid))


class NativeCall(Generic[H]):
    """One ext_proc stream on the native transport: message bytes in, serialized replies out."""

    __slots__ = ("servicer", "stream", "refusal", "opened", "code")

    def __init__(self, servicer: StreamServicer[H], stream: H) -> None:
        self.servicer = servicer
        self.stream = stream
        self.refusal = servicer.admit(stream)
        metrics = servicer.stream_metrics
        self.opened = metrics.started() if metrics is not None else 0.0
        self.code = GRPC_CANCELLED  # until the client half-closes or a message fails

    def message(self, data: memoryview) -> list[bytes] | Awaitable[list[bytes]]:
        try:
            replies = self.servicer.answer(self.stream, self.refusal, _parse(data))
        except (ProtocolViolation, DecodeError) as exc:
            _violation(self.stream, exc)
            self.code = GRPC_INVALID_ARGUMENT
            raise CallError(GRPC_INVALID_ARGUMENT, f"ext_proc protocol violation: {exc}") from None
        except Exception:
            _internal(self.stream)
            self.code = GRPC_INTERNAL
            raise CallError(GRPC_INTERNAL, "internal error in the ext_proc server") from None
        self.refusal = None
        if isinstance(replies, Deferred):
            return self._later(replies)
        return [reply.SerializeToString() for reply in replies]

    async def _later(self, deferred: Deferred[Any]) -> list[bytes]:
        """The replies of a request flow control held, once it is let through or refused."""
        try:
            replies = await deferred.replies()
        except Exception:
            _internal(self.stream)
            raise CallError(GRPC_INTERNAL, "internal error in the ext_proc server") from None
        return [reply.SerializeToString() for reply in replies]

    def half_closed(self) -> list[bytes]:
        if self.code == GRPC_CANCELLED:
            self.code = GRPC_OK
        return []

    def closed(self) -> None:
        if self.servicer.stream_metrics is not None:
            self.servicer.stream_metrics.finished(self.opened, self.code)
        self.servicer.release(self.stream)
        self.stream.close()


def _violation(stream: StreamHandler, exc: Exception) -> None:
    rid = clip(stream.request_id or "-")
    log.warning("ext_proc protocol violation (request id=%s): %s", rid, exc, extra=fields(request_id=rid))


def _internal(stream: StreamHandler) -> None:
    rid = clip(stream.request_id or "-")
    log.exception("internal error handling ext_proc message (request id=%s)", rid, extra=fields(request_id=rid))


class ExtProcServicer(StreamServicer[RequestStream]):
    """The endpoint picker's service: one ``RequestStream`` per stream, all sharing the director.

    With a ``limiter``, streams past its limit get a 503 OpenAI error (counted and logged as a
    rejected request); without one every stream is admitted (tests, embedding).
    """

    def __init__(self, director: Director, max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
                 limiter: StreamLimiter | None = None) -> None:
        self.director = director
        self.max_body_bytes = max_body_bytes
        self.limiter = limiter
        super().__init__(lambda: RequestStream(self.director, self.max_body_bytes))

    def admit(self, stream: RequestStream) -> RequestError | None:
        if self.limiter is None or self.limiter.admit(stream):
            return None
        return overloaded(self.limiter.max_streams)

    def refuse(self, stream: RequestStream, message: pb.ProcessingRequest, error: RequestError) -> list[pb.ProcessingResponse]:
        return stream.refuse(message, error)

    def release(self, stream: RequestStream) -> None:
        if self.limiter is not None:
            self.limiter.release(stream)
