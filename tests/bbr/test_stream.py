"""RouterStream: the ext_proc sequence for each body mode, rejections, pass-through of the response phase."""

from __future__ import annotations

import orjson
import pytest
from envoy.extensions.filters.http.ext_proc.v3.processing_mode_pb2 import ProcessingMode
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb

from epp.bbr.catalog import ModelCatalog, parse_models_flag
from epp.bbr.router import BASE_MODEL_HEADER, ENGINE_HEADER, MODEL_HEADER, BodyRouter
from epp.bbr.stream import Phase, RouterStream
from epp.extproc.stream import ProtocolViolation
from tests.extproc.builders import (
    BUFFERED,
    DUPLEX,
    chunked,
    immediate,
    request_body,
    request_headers,
    response_body,
    response_headers,
    set_headers,
    streamed,
)

BODY = orjson.dumps({"model": "sql-lora", "messages": [{"role": "user", "content": "hello"}]})
ROUTED = {MODEL_HEADER: "sql-lora", BASE_MODEL_HEADER: "llama"}


def stream(max_body_bytes: int = 10_000) -> RouterStream:
    return RouterStream(BodyRouter(ModelCatalog(parse_models_flag("llama,sql-lora=llama"), restricts=True)),
                        max_body_bytes)


def test_buffered_headers_continue_then_body_answer_sets_headers_and_clears_route_cache() -> None:
    s = stream()
    (first,) = s.handle(request_headers(mode=BUFFERED))
    assert first.request_headers == pb.HeadersResponse()  # nothing decided yet
    (reply,) = s.handle(request_body(BODY, eos=True))
    common = reply.request_body.response
    assert set_headers(common) == ROUTED
    assert list(common.header_mutation.remove_headers) == [ENGINE_HEADER]
    assert common.clear_route_cache
    assert not common.HasField("body_mutation")  # the body goes on untouched
    assert not reply.HasField("dynamic_metadata")  # no endpoint pick: that is the picker's job
    assert s.phase is Phase.ROUTED and s.request_id == "req-1"


def test_buffered_partial_routes_on_its_single_body_message() -> None:
    s = stream()
    s.handle(request_headers(mode=ProcessingMode.BUFFERED_PARTIAL))
    (reply,) = s.handle(request_body(BODY, eos=False))
    assert set_headers(reply.request_body.response) == ROUTED


@pytest.mark.parametrize("empty_final", [False, True])
def test_duplex_collects_chunks_then_answers_headers_and_returns_the_body(empty_final: bool) -> None:
    s = stream()
    assert s.handle(request_headers(mode=DUPLEX)) == []
    replies = [r for m in chunked(BODY, 7, empty_final=empty_final) for r in s.handle(m)]
    assert replies[0].HasField("request_headers")
    common = replies[0].request_headers.response
    assert set_headers(common) == ROUTED and common.clear_route_cache
    data, eos = streamed(replies[1:])
    assert data == BODY and eos[-1] and not any(eos[:-1])


def test_duplex_body_ended_by_trailers() -> None:
    s = stream()
    s.handle(request_headers(mode=DUPLEX))
    assert s.handle(request_body(BODY)) == []
    replies = s.handle(pb.ProcessingRequest(request_trailers=pb.HttpTrailers()))
    assert set_headers(replies[0].request_headers.response) == ROUTED
    data, eos = streamed(replies)
    assert data == BODY and eos == [False]  # the trailers, not a data frame, end this body
    assert replies[-1].HasField("request_trailers")


def test_trailers_ending_a_rejected_body_get_no_reply_after_the_immediate_response() -> None:
    s = stream()
    s.handle(request_headers(mode=DUPLEX))
    assert s.handle(request_body(b'{"model": ')) == []
    replies = s.handle(pb.ProcessingRequest(request_trailers=pb.HttpTrailers()))
    assert [r.WhichOneof("response") for r in replies] == ["immediate_response"]


def test_bodyless_request_is_answered_on_headers_and_loses_client_routing_headers() -> None:
    s = stream()
    (reply,) = s.handle(request_headers("/v1/models", eos=True, method="GET", extra={MODEL_HEADER: "spoofed"}))
    common = reply.request_headers.response
    assert set_headers(common) == {}
    assert set(common.header_mutation.remove_headers) == {MODEL_HEADER, BASE_MODEL_HEADER, ENGINE_HEADER}
    assert s.phase is Phase.ROUTED


@pytest.mark.parametrize("mode", [BUFFERED, DUPLEX])
def test_unknown_model_gets_an_immediate_404(mode: int) -> None:
    s = stream()
    s.handle(request_headers(mode=mode))
    (reply,) = s.handle(request_body(orjson.dumps({"model": "nope", "prompt": "x"}), eos=True))
    status, headers, error = immediate(reply)
    assert status == 404 and headers["content-type"] == "application/json"
    assert error["error"]["code"] == "model_not_found"
    assert reply.immediate_response.details == "epp_model_not_found"
    assert s.phase is Phase.REJECTED
    assert s.handle(request_body(b"late", eos=True)) == []  # Envoy may flush what it sent before


def test_malformed_json_gets_an_immediate_400() -> None:
    s = stream()
    s.handle(request_headers(mode=BUFFERED))
    status, _, error = immediate(s.handle(request_body(b'{"model": ', eos=True))[0])
    assert status == 400 and error["error"]["code"] == "invalid_json"


def test_oversized_body_gets_413_as_soon_as_it_crosses_the_limit() -> None:
    s = stream(max_body_bytes=64)
    s.handle(request_headers(mode=DUPLEX))
    assert s.handle(request_body(b"x" * 60)) == []
    status, _, error = immediate(s.handle(request_body(b"x" * 10))[0])
    assert status == 413 and error["error"]["code"] == "request_too_large"


@pytest.mark.parametrize("mode", [ProcessingMode.NONE, ProcessingMode.STREAMED])
def test_modes_that_hide_the_body_are_a_loud_500(mode: int) -> None:
    s = stream()
    status, _, error = immediate(s.handle(request_headers(mode=mode))[0])
    assert status == 500 and error["error"]["code"] == "bbr_body_mode"
    assert ProcessingMode.BodySendMode.Name(mode) in error["error"]["message"]


def test_response_phase_passes_through_in_every_mode() -> None:
    s = stream()
    s.handle(request_headers(mode=BUFFERED, response_mode=BUFFERED))
    s.handle(request_body(BODY, eos=True))
    (headers,) = s.handle(response_headers())
    assert headers.HasField("response_headers") and set_headers(headers.response_headers.response) == {}
    (body,) = s.handle(response_body(b"{}", eos=True))
    assert body.response_body == pb.BodyResponse(response=pb.CommonResponse())
    (trailers,) = s.handle(pb.ProcessingRequest(response_trailers=pb.HttpTrailers()))
    assert trailers.HasField("response_trailers")

    d = stream()
    d.handle(request_headers(mode=DUPLEX, response_mode=DUPLEX))
    d.handle(request_body(BODY, eos=True))
    d.handle(response_headers("text/event-stream"))
    data, eos = streamed(d.handle(response_body(b"data: 1\n\n", eos=False)), "response_body")
    assert (data, eos) == (b"data: 1\n\n", [False])


@pytest.mark.parametrize("messages", [
    [pb.ProcessingRequest()],
    [request_body(BODY, eos=True)],
    [request_headers(mode=BUFFERED), request_headers(mode=BUFFERED)],
    [request_headers(mode=BUFFERED), response_headers()],
    [pb.ProcessingRequest(request_trailers=pb.HttpTrailers())],
])
def test_out_of_sequence_messages_are_protocol_violations(messages: list[pb.ProcessingRequest]) -> None:
    s = stream()
    with pytest.raises(ProtocolViolation):
        for m in messages:
            s.handle(m)
