"""The grpc.aio ``ExternalProcessor`` service: feeds each stream's messages to a ``RequestStream``.

Kept thin on purpose: all decisions live in ``RequestStream`` (no gRPC runtime) and the director.
A protocol violation or an unexpected error ends that one stream with a gRPC status; the server and
other streams carry on.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

import grpc
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as pb_grpc

from epp._util.logs import clip, fields
from epp.director import Director
from epp.extproc.limits import StreamLimiter, overloaded
from epp.extproc.stream import ProtocolViolation, RequestStream
from epp.request.body import DEFAULT_MAX_BODY_BYTES

log = logging.getLogger(__name__)


class ExtProcServicer(pb_grpc.ExternalProcessorServicer):
    """``limiter`` bounds live streams; without one every stream is admitted (tests, embedding)."""

    def __init__(self, director: Director, max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
                 limiter: StreamLimiter | None = None) -> None:
        self.director = director
        self.max_body_bytes = max_body_bytes
        self.limiter = limiter

    async def Process(  # noqa: N802  (gRPC method name)
        self, request_iterator: AsyncIterator[pb.ProcessingRequest], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.ProcessingResponse]:
        stream = RequestStream(self.director, self.max_body_bytes)
        limiter = self.limiter
        refusal = overloaded(limiter.max_streams) if limiter is not None and not limiter.admit(stream) else None
        try:
            async for message in request_iterator:
                try:
                    if refusal is not None:
                        replies, refusal = stream.refuse(message, refusal), None
                    else:
                        replies = stream.handle(message)
                except ProtocolViolation as exc:
                    rid = clip(stream.request_id or "-")
                    log.warning("ext_proc protocol violation (request id=%s): %s", rid, exc, extra=fields(request_id=rid))
                    await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"ext_proc protocol violation: {exc}")
                except Exception:
                    rid = clip(stream.request_id or "-")
                    log.exception("internal error handling ext_proc message (request id=%s)", rid, extra=fields(request_id=rid))
                    await context.abort(grpc.StatusCode.INTERNAL, "internal error in the endpoint picker")
                for reply in replies:
                    yield reply
        finally:
            if limiter is not None:
                limiter.release(stream)
            stream.close()
