"""The grpc.aio ``ExternalProcessor`` service: feeds each stream's messages to a fresh stream handler.

Kept thin on purpose: all decisions live in the handler (no gRPC runtime) — ``RequestStream`` + the
director for the picker, ``epp.bbr.stream.RouterStream`` for the body-based router. A protocol violation
or an unexpected error ends that one stream with a gRPC status; the server and other streams carry on.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from typing import Protocol

import grpc
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as pb_grpc

from epp.director import Director
from epp.extproc.collect import ProtocolViolation
from epp.extproc.stream import RequestStream
from epp.request.body import DEFAULT_MAX_BODY_BYTES

log = logging.getLogger(__name__)


class StreamHandler(Protocol):
    """One gRPC stream's state machine: ``handle`` returns the replies to one message, ``close`` runs once at the end."""

    request_id: str

    def handle(self, message: pb.ProcessingRequest) -> list[pb.ProcessingResponse]: ...

    def close(self) -> None: ...


class StreamServicer(pb_grpc.ExternalProcessorServicer):
    """Runs every ext_proc stream through its own handler from ``new_stream``."""

    def __init__(self, new_stream: Callable[[], StreamHandler]) -> None:
        self.new_stream = new_stream

    async def Process(  # noqa: N802  (gRPC method name)
        self, request_iterator: AsyncIterator[pb.ProcessingRequest], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.ProcessingResponse]:
        stream = self.new_stream()
        try:
            async for message in request_iterator:
                try:
                    replies = stream.handle(message)
                except ProtocolViolation as exc:
                    log.warning("ext_proc protocol violation (request id=%s): %s", stream.request_id or "-", exc)
                    await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"ext_proc protocol violation: {exc}")
                except Exception:
                    log.exception("internal error handling ext_proc message (request id=%s)", stream.request_id or "-")
                    await context.abort(grpc.StatusCode.INTERNAL, "internal error in the ext_proc server")
                for reply in replies:
                    yield reply
        finally:
            try:
                stream.close()
            except Exception:  # never replace the stream's own outcome (e.g. a CancelledError) with this
                log.exception("internal error closing ext_proc stream (request id=%s)", stream.request_id or "-")


class ExtProcServicer(StreamServicer):
    """The endpoint picker's service: one ``RequestStream`` per stream, all sharing the director."""

    def __init__(self, director: Director, max_body_bytes: int = DEFAULT_MAX_BODY_BYTES) -> None:
        self.director = director
        self.max_body_bytes = max_body_bytes
        super().__init__(lambda: RequestStream(self.director, self.max_body_bytes))
