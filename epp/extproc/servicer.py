"""The ``ExternalProcessor`` service: feeds each stream's messages to a ``RequestStream``.

Two adapters over the same state machine: ``ExtProcCall`` for epp's native HTTP/2 transport (one call
object per stream, answering each message synchronously) and ``ExtProcServicer.Process`` for grpc.aio
(``--grpc-server grpcio``). Kept thin on purpose: all decisions live in ``RequestStream`` (no gRPC
runtime) and the director. A protocol violation or an unexpected error ends that one stream with a
gRPC status; the server and other streams carry on.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

import grpc
from google.protobuf.message import DecodeError
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as pb_grpc

from epp.director import Director
from epp.extproc.h2.connection import GRPC_INTERNAL, GRPC_INVALID_ARGUMENT, CallError
from epp.extproc.stream import ProtocolViolation, RequestStream
from epp.request.body import DEFAULT_MAX_BODY_BYTES

log = logging.getLogger(__name__)


PROCESS_PATH = b"/envoy.service.ext_proc.v3.ExternalProcessor/Process"
_parse = pb.ProcessingRequest.FromString


class ExtProcCall:
    """One ext_proc stream on the native transport: message bytes in, serialized replies out."""

    __slots__ = ("stream",)

    def __init__(self, stream: RequestStream) -> None:
        self.stream = stream

    def message(self, data: memoryview) -> list[bytes]:
        stream = self.stream
        try:
            replies = stream.handle(_parse(data))
        except (ProtocolViolation, DecodeError) as exc:
            log.warning("ext_proc protocol violation (request id=%s): %s", stream.request_id or "-", exc)
            raise CallError(GRPC_INVALID_ARGUMENT, f"ext_proc protocol violation: {exc}") from None
        except Exception:
            log.exception("internal error handling ext_proc message (request id=%s)", stream.request_id or "-")
            raise CallError(GRPC_INTERNAL, "internal error in the endpoint picker") from None
        return [reply.SerializeToString() for reply in replies]

    def half_closed(self) -> list[bytes]:
        return []

    def closed(self) -> None:
        self.stream.close()


class ExtProcServicer(pb_grpc.ExternalProcessorServicer):
    def __init__(self, director: Director, max_body_bytes: int = DEFAULT_MAX_BODY_BYTES) -> None:
        self.director = director
        self.max_body_bytes = max_body_bytes

    def new_call(self) -> ExtProcCall:
        """A call for the native transport."""
        return ExtProcCall(RequestStream(self.director, self.max_body_bytes))

    async def Process(  # noqa: N802  (gRPC method name)
        self, request_iterator: AsyncIterator[pb.ProcessingRequest], context: grpc.aio.ServicerContext
    ) -> None:
        """grpc.aio path: ``context.read()``/``write()`` (measured a few per cent cheaper than an async
        iterator plus ``yield``, which wrap every message in generator machinery)."""
        stream = RequestStream(self.director, self.max_body_bytes)
        try:
            while True:
                message = await context.read()
                if message is grpc.aio.EOF:
                    return
                try:
                    replies = stream.handle(message)
                except ProtocolViolation as exc:
                    log.warning("ext_proc protocol violation (request id=%s): %s", stream.request_id or "-", exc)
                    await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"ext_proc protocol violation: {exc}")
                except Exception:
                    log.exception("internal error handling ext_proc message (request id=%s)", stream.request_id or "-")
                    await context.abort(grpc.StatusCode.INTERNAL, "internal error in the endpoint picker")
                for reply in replies:
                    await context.write(reply)
        finally:
            stream.close()
