"""The floor for ``bench/overhead.py``: the least a Python grpc.aio ext_proc picker can do per request.

Same protocol work as epp (hold the headers answer until the duplex body has ended, then send the
destination header + ``envoy.lb`` metadata and the body back; answer response headers; stream response
chunks back; BUFFERED bodies answered once), but no parsing, scheduling, metrics or usage counting: one
fixed destination. What epp costs above this is epp's own code; this itself is the cost of grpc.aio.

    python bench/minimal_extproc.py --port 9002 --destination 127.0.0.1:8000 [--api iterator] [--burn-ms 0.3]

``--burn-ms`` spends that much thread CPU on each routed request before answering (a stand-in for a pick
of known cost), to see what a handler of that cost adds on grpc.aio with nothing else changed.
"""

from __future__ import annotations

import argparse
import gc
import time
from collections.abc import AsyncIterator

import grpc
import uvloop
from envoy.config.core.v3 import base_pb2
from envoy.extensions.filters.http.ext_proc.v3.processing_mode_pb2 import ProcessingMode
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as pb_grpc
from google.protobuf import struct_pb2

DUPLEX = ProcessingMode.FULL_DUPLEX_STREAMED
CHUNK = 62_000


class Minimal:
    """Answers by message kind with no state but the request body and the body modes."""

    def __init__(self, destination: str, burn_s: float = 0.0) -> None:
        self.burn_s = burn_s
        header = base_pb2.HeaderValueOption(
            header=base_pb2.HeaderValue(key="x-gateway-destination-endpoint", raw_value=destination.encode()),
            append_action=base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD,
        )
        self.route = pb.CommonResponse(header_mutation=pb.HeaderMutation(set_headers=[header]), clear_route_cache=True)
        self.metadata = struct_pb2.Struct()
        self.metadata.get_or_create_struct("envoy.lb")["x-gateway-destination-endpoint"] = destination

    def routed_headers(self) -> pb.ProcessingResponse:
        reply = pb.ProcessingResponse(request_headers=pb.HeadersResponse(response=self.route))
        reply.dynamic_metadata.CopyFrom(self.metadata)
        return reply

    def burn(self) -> None:
        """``--burn-ms``: busy Python work until this thread has used that much CPU."""
        end = time.thread_time() + self.burn_s
        while time.thread_time() < end:
            sum(range(64))

    @staticmethod
    def streamed(field: str, body: bytes, eos: bool) -> list[pb.ProcessingResponse]:
        out = []
        for start in range(0, max(len(body), 1), CHUNK):
            common = pb.CommonResponse()
            common.body_mutation.streamed_response.body = body[start:start + CHUNK]
            common.body_mutation.streamed_response.end_of_stream = eos and start + CHUNK >= len(body)
            out.append(pb.ProcessingResponse(**{field: pb.BodyResponse(response=common)}))
        return out

    def replies(self, message: pb.ProcessingRequest, state: dict[str, object]) -> list[pb.ProcessingResponse]:
        kind = message.WhichOneof("request")
        if kind == "request_headers":
            state["req_mode"] = message.protocol_config.request_body_mode
            state["resp_mode"] = message.protocol_config.response_body_mode
            state["body"] = []
            if message.request_headers.end_of_stream:
                return [self.routed_headers()]
            return [] if state["req_mode"] == DUPLEX else [pb.ProcessingResponse(request_headers=pb.HeadersResponse())]
        if kind == "request_body":
            if state["req_mode"] != DUPLEX:
                reply = pb.ProcessingResponse(request_body=pb.BodyResponse(response=self.route))
                reply.dynamic_metadata.CopyFrom(self.metadata)
                return [reply]
            parts: list[bytes] = state["body"]  # type: ignore[assignment]
            parts.append(message.request_body.body)
            if not message.request_body.end_of_stream:
                return []
            self.burn()
            return [self.routed_headers(), *self.streamed("request_body", b"".join(parts), True)]
        if kind == "request_trailers":
            return [pb.ProcessingResponse(request_trailers=pb.TrailersResponse())]
        if kind == "response_headers":
            return [pb.ProcessingResponse(response_headers=pb.HeadersResponse())]
        if kind == "response_body":
            if state["resp_mode"] == DUPLEX:
                return self.streamed("response_body", message.response_body.body, message.response_body.end_of_stream)
            return [pb.ProcessingResponse(response_body=pb.BodyResponse())]
        return [pb.ProcessingResponse(response_trailers=pb.TrailersResponse())]


class IteratorServicer(pb_grpc.ExternalProcessorServicer):
    def __init__(self, minimal: Minimal) -> None:
        self.minimal = minimal

    async def Process(self, request_iterator: AsyncIterator[pb.ProcessingRequest], context: object) -> AsyncIterator[pb.ProcessingResponse]:  # noqa: N802
        state: dict[str, object] = {}
        async for message in request_iterator:
            for reply in self.minimal.replies(message, state):
                yield reply


class ReadWriteServicer(pb_grpc.ExternalProcessorServicer):
    def __init__(self, minimal: Minimal) -> None:
        self.minimal = minimal

    async def Process(self, request_iterator: object, context: grpc.aio.ServicerContext) -> None:  # noqa: N802
        state: dict[str, object] = {}
        while True:
            message = await context.read()
            if message is grpc.aio.EOF:
                return
            for reply in self.minimal.replies(message, state):
                await context.write(reply)


async def serve(port: int, destination: str, api: str, burn_ms: float) -> None:
    server = grpc.aio.server()
    minimal = Minimal(destination, burn_ms / 1000)
    servicer = IteratorServicer(minimal) if api == "iterator" else ReadWriteServicer(minimal)
    pb_grpc.add_ExternalProcessorServicer_to_server(servicer, server)
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    gc.freeze()
    print("ready", flush=True)
    await server.wait_for_termination()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--destination", required=True, help="IP:PORT every request is sent to")
    parser.add_argument("--api", choices=("read-write", "iterator"), default="read-write",
                        help="grpc.aio servicer style: context.read()/write() or async iterator + yield")
    parser.add_argument("--burn-ms", type=float, default=0.0,
                        help="thread CPU to spend on each routed request (a stand-in pick); default 0")
    args = parser.parse_args()
    uvloop.run(serve(args.port, args.destination, args.api, args.burn_ms))


if __name__ == "__main__":
    main()
