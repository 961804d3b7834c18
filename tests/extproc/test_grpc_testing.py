"""The servicer's stream logic under grpcio-testing's in-process RPC runtime.

grpcio-testing drives only synchronous servicers, so this file adapts ``RequestStream`` the same way
the grpc.aio servicer does (handle each message, yield its replies, close at the end); the aio
servicer itself is exercised over real sockets in test_server.py.
"""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import grpc_testing
import pytest
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb

from epp.extproc.stream import ProtocolViolation, RequestStream
from epp.director import Director
from tests.extproc.builders import CHAT_BODY, chunked, immediate, make_director, request_body, request_headers, set_headers

SERVICE = pb.DESCRIPTOR.services_by_name["ExternalProcessor"]
METHOD = SERVICE.methods_by_name["Process"]


class SyncExtProc:
    def __init__(self, director: Director) -> None:
        self.director = director

    def Process(self, requests: Iterator[pb.ProcessingRequest], context: grpc.ServicerContext):  # noqa: N802
        stream = RequestStream(self.director)
        try:
            for message in requests:
                try:
                    replies = stream.handle(message)
                except ProtocolViolation as exc:
                    context.set_code(grpc.StatusCode.INVALID_ARGUMENT)
                    context.set_details(str(exc))
                    return
                yield from replies
        finally:
            stream.close()


@pytest.fixture
def server() -> grpc_testing.Server:
    director = make_director("10.0.0.1:8000", "10.0.0.2:8000")
    return grpc_testing.server_from_dictionary({SERVICE: SyncExtProc(director)}, grpc_testing.strict_real_time())


def test_duplex_sequence_over_grpc_testing(server: grpc_testing.Server) -> None:
    rpc = server.invoke_stream_stream(METHOD, (), None)
    rpc.send_request(request_headers())
    for message in chunked(CHAT_BODY, 9, empty_final=True):
        rpc.send_request(message)
    head = rpc.take_response()
    assert set_headers(head.request_headers.response)["x-gateway-destination-endpoint"] in {
        "10.0.0.1:8000", "10.0.0.2:8000",
    }
    body = rpc.take_response()
    assert body.request_body.response.body_mutation.streamed_response.end_of_stream
    rpc.requests_closed()
    _, code, _ = rpc.termination()
    assert code is grpc.StatusCode.OK


def test_bad_json_over_grpc_testing(server: grpc_testing.Server) -> None:
    rpc = server.invoke_stream_stream(METHOD, (), None)
    rpc.send_request(request_headers())
    rpc.send_request(request_body(b"{nope", eos=True))
    status, headers, payload = immediate(rpc.take_response())
    assert (status, headers["content-type"]) == (400, "application/json")
    assert "not valid JSON" in payload["error"]["message"]
    rpc.requests_closed()
    assert rpc.termination()[1] is grpc.StatusCode.OK


def test_protocol_violation_over_grpc_testing(server: grpc_testing.Server) -> None:
    rpc = server.invoke_stream_stream(METHOD, (), None)
    rpc.send_request(request_body(b"{}", eos=True))
    rpc.requests_closed()
    _, code, details = rpc.termination()
    assert code is grpc.StatusCode.INVALID_ARGUMENT and "awaiting request headers" in details
