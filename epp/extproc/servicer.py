"""The grpc.aio ``ExternalProcessor`` service: feeds each stream's messages to a fresh stream handler.

Kept thin on purpose: all decisions live in the handler (no gRPC runtime) — ``RequestStream`` + the
director for the picker, ``epp.bbr.stream.RouterStream`` for the body-based router. A protocol violation
or an unexpected error ends that one stream with a gRPC status; the server and other streams carry on.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from typing import Generic, Protocol, TypeVar

import grpc
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as pb_grpc

from epp._util.logs import clip, fields
from epp.director import Director
from epp.extproc.collect import ProtocolViolation
from epp.extproc.limits import StreamLimiter, overloaded
from epp.extproc.stream import RequestStream
from epp.request import RequestError
from epp.request.body import DEFAULT_MAX_BODY_BYTES

log = logging.getLogger(__name__)


class StreamHandler(Protocol):
    """One gRPC stream's state machine: ``handle`` returns the replies to one message, ``close`` runs once at the end."""

    request_id: str

    def handle(self, message: pb.ProcessingRequest) -> list[pb.ProcessingResponse]: ...

    def close(self) -> None: ...


H = TypeVar("H", bound=StreamHandler)


class StreamServicer(pb_grpc.ExternalProcessorServicer, Generic[H]):
    """Runs every ext_proc stream through its own handler from ``new_stream``.

    ``admit``/``refuse``/``release`` are hooks for servers that bound their streams (the picker):
    a stream ``admit`` turns away gets ``refuse``'s answer to its first message, and nothing else.
    """

    def __init__(self, new_stream: Callable[[], H]) -> None:
        self.new_stream = new_stream

    def admit(self, stream: H) -> RequestError | None:
        """None to serve ``stream``; otherwise the error to answer it with."""
        return None

    def refuse(self, stream: H, message: pb.ProcessingRequest, error: RequestError) -> list[pb.ProcessingResponse]:
        raise NotImplementedError("a servicer whose admit() refuses streams must say how to refuse them")

    def release(self, stream: H) -> None:
        """The stream ended, however it ended (called for refused streams too)."""

    async def Process(  # noqa: N802  (gRPC method name)
        self, request_iterator: AsyncIterator[pb.ProcessingRequest], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.ProcessingResponse]:
        stream = self.new_stream()
        refusal = self.admit(stream)
        try:
            async for message in request_iterator:
                try:
                    if refusal is not None:
                        replies, refusal = self.refuse(stream, message, refusal), None
                    else:
                        replies = stream.handle(message)
                except ProtocolViolation as exc:
                    rid = clip(stream.request_id or "-")
                    log.warning("ext_proc protocol violation (request id=%s): %s", rid, exc, extra=fields(request_id=rid))
                    await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"ext_proc protocol violation: {exc}")
                except Exception:
                    rid = clip(stream.request_id or "-")
                    log.exception("internal error handling ext_proc message (request id=%s)", rid,
                                  extra=fields(request_id=rid))
                    await context.abort(grpc.StatusCode.INTERNAL, "internal error in the ext_proc server")
                for reply in replies:
                    yield reply
        finally:
            self.release(stream)
            try:
                stream.close()
            except Exception:  # never replace the stream's own outcome (e.g. a CancelledError) with this
                rid = clip(stream.request_id or "-")
                log.exception("internal error closing ext_proc stream (request id=%s)", rid, extra=fields(request_id=rid))


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
