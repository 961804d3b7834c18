"""The ext_proc state machine, message by message, without a gRPC runtime."""

from __future__ import annotations

import base64
import gc

import orjson
import pytest
import weakref
from envoy.extensions.filters.http.ext_proc.v3.processing_mode_pb2 import ProcessingMode

from epp.datastore import EndpointState
from epp.extproc.messages import MAX_CHUNK_BYTES
from epp.extproc.stream import ProtocolViolation, RequestStream
from epp.request import LLMRequest
from epp.plugin.typed_name import TypedName
from tests.extproc.builders import (
    BUFFERED,
    CHAT_BODY,
    chunked,
    immediate,
    make_director,
    metadata_destination,
    request_body,
    request_headers,
    response_body,
    response_headers,
    set_headers,
    streamed,
)
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb

POOL = ("10.0.0.1:8000", "10.0.0.2:8000")


def run(stream: RequestStream, messages: list[pb.ProcessingRequest]) -> list[pb.ProcessingResponse]:
    out: list[pb.ProcessingResponse] = []
    for m in messages:
        out.extend(stream.handle(m))
    return out


@pytest.mark.parametrize("empty_final", [False, True])
@pytest.mark.parametrize("chunk", [7, 10_000])
def test_duplex_body_waits_for_end_then_headers_and_body(chunk: int, empty_final: bool) -> None:
    stream = RequestStream(make_director(*POOL))
    assert stream.handle(request_headers()) == []
    parts = chunked(CHAT_BODY, chunk, empty_final)
    for p in parts[:-1]:
        assert stream.handle(p) == []
    replies = stream.handle(parts[-1])
    first = replies[0]
    assert first.HasField("request_headers")
    common = first.request_headers.response
    assert common.clear_route_cache
    headers = set_headers(common)
    assert headers["x-gateway-destination-endpoint"] in POOL
    assert headers["x-gateway-model-name"] == "m"
    assert "content-length" not in headers and "x-request-id" not in headers
    assert metadata_destination(first) == headers["x-gateway-destination-endpoint"]
    body, eos = streamed(replies[1:])
    assert (body, eos) == (CHAT_BODY, [True])


def test_large_body_goes_back_in_chunks_of_at_most_62000() -> None:
    big = orjson.dumps({"model": "m", "prompt": "x" * 150_000})
    stream = RequestStream(make_director(*POOL))
    replies = run(stream, [request_headers("/v1/completions"), *chunked(big, 16_384)])
    chunks = [r.request_body.response.body_mutation.streamed_response for r in replies[1:]]
    assert [len(c.body) for c in chunks] == [MAX_CHUNK_BYTES, MAX_CHUNK_BYTES, len(big) - 2 * MAX_CHUNK_BYTES]
    assert [c.end_of_stream for c in chunks] == [False, False, True]
    assert b"".join(c.body for c in chunks) == big


def test_buffered_mode_answers_headers_then_routes_on_body() -> None:
    stream = RequestStream(make_director(*POOL))
    first = stream.handle(request_headers(mode=BUFFERED))
    assert len(first) == 1 and first[0].HasField("request_headers")
    assert not first[0].request_headers.response.header_mutation.set_headers
    (reply,) = stream.handle(request_body(CHAT_BODY, eos=True))
    assert reply.HasField("request_body")
    common = reply.request_body.response
    dest = set_headers(common)["x-gateway-destination-endpoint"]
    assert dest in POOL and metadata_destination(reply) == dest
    assert not common.HasField("body_mutation")


def test_header_only_request_gets_a_random_endpoint_at_once() -> None:
    stream = RequestStream(make_director(*POOL))
    (reply,) = stream.handle(request_headers("/v1/models", eos=True, method="GET"))
    dest = set_headers(reply.request_headers.response)["x-gateway-destination-endpoint"]
    assert dest in POOL and metadata_destination(reply) == dest


@pytest.mark.parametrize("mode", [ProcessingMode.NONE, ProcessingMode.STREAMED])
def test_body_modes_that_hide_the_body_are_a_loud_500_not_a_blind_pick(mode: int) -> None:
    stream = RequestStream(make_director(*POOL))
    (reply,) = stream.handle(request_headers(mode=mode))
    status, _, error = immediate(reply)
    assert status == 500 and error["error"]["code"] == "body_mode"
    assert ProcessingMode.BodySendMode.Name(mode) in error["error"]["message"]
    assert stream.decision is None


@pytest.mark.parametrize("mode", [ProcessingMode.NONE, ProcessingMode.STREAMED])
def test_body_less_request_in_any_body_mode_routes_on_headers(mode: int) -> None:
    stream = RequestStream(make_director(*POOL))
    (reply,) = stream.handle(request_headers("/v1/models", eos=True, method="GET", mode=mode))
    assert set_headers(reply.request_headers.response)["x-gateway-destination-endpoint"] in POOL


def test_header_only_request_with_empty_pool_is_500() -> None:
    stream = RequestStream(make_director())
    (reply,) = stream.handle(request_headers("/v1/models", eos=True, method="GET"))
    status, headers, body = immediate(reply)
    assert (status, headers["content-type"]) == (500, "application/json")
    assert body["error"]["message"] == "no pods available in datastore"


def test_missing_request_id_is_generated_and_set_upstream() -> None:
    stream = RequestStream(make_director(*POOL), new_request_id=lambda: "generated-id")
    msg = request_headers()
    del msg.request_headers.headers.headers[3]  # x-request-id
    replies = run(stream, [msg, request_body(CHAT_BODY, eos=True)])
    assert set_headers(replies[0].request_headers.response)["x-request-id"] == "generated-id"


@pytest.mark.parametrize(
    ("body", "status", "reason"),
    [
        (b'{"model": ', 400, None),
        (b'{"model": "\xff\xfe"}', 400, None),
        (b'{"messages": []}', 400, None),
        (b"[]", 400, None),
    ],
)
def test_bad_bodies_become_immediate_openai_errors(body: bytes, status: int, reason: str | None) -> None:
    director = make_director(*POOL)
    stream = RequestStream(director)
    replies = run(stream, [request_headers(), request_body(body, eos=True)])
    code, headers, payload = immediate(replies[0])
    assert (code, headers.get("x-llm-d-request-dropped-reason")) == (status, reason)
    assert headers["content-type"] == "application/json" and payload["error"]["message"]
    # Late messages after the immediate response are ignored, not errors.
    assert stream.handle(request_body(b"more", eos=True)) == []


def test_body_over_limit_is_413_as_soon_as_it_crosses() -> None:
    stream = RequestStream(make_director(*POOL), max_body_bytes=100)
    assert run(stream, [request_headers(), request_body(b"x" * 60)]) == []
    (reply,) = stream.handle(request_body(b"x" * 60))
    assert immediate(reply)[0] == 413


def test_empty_pool_is_503_with_drop_reason() -> None:
    stream = RequestStream(make_director())
    replies = run(stream, [request_headers(), request_body(CHAT_BODY, eos=True)])
    code, headers, _ = immediate(replies[0])
    assert (code, headers["x-llm-d-request-dropped-reason"]) == (503, "rejected-no-endpoints")


@pytest.mark.parametrize(
    ("subset", "expected"),
    [(["10.0.0.2:1"], "10.0.0.2:8000"), ("10.0.0.1:8000", "10.0.0.1:8000"), ([], None), (["10.9.9.9:1"], None)],
)
def test_subset_hint_on_the_body_message(subset: object, expected: str | None) -> None:
    stream = RequestStream(make_director(*POOL))
    replies = run(stream, [request_headers(), request_body(CHAT_BODY, eos=True, subset=subset)])
    if expected is None:
        assert immediate(replies[0])[0] == 503
    else:
        assert set_headers(replies[0].request_headers.response)["x-gateway-destination-endpoint"] == expected


@pytest.mark.parametrize(
    ("messages", "match"),
    [
        ([request_body(b"x", eos=True)], "request_body received while awaiting request headers"),
        ([request_headers(), request_headers()], "request_headers received while collecting"),
        ([request_headers(), response_headers()], "response_headers received while collecting"),
        ([pb.ProcessingRequest()], "carries no"),
        ([request_headers(eos=True), request_body(b"x", eos=True)], "request_body received while routed"),
    ],
)
def test_protocol_violations(messages: list[pb.ProcessingRequest], match: str) -> None:
    stream = RequestStream(make_director(*POOL))
    with pytest.raises(ProtocolViolation, match=match):
        run(stream, messages)


def test_trailers_end_a_body_without_eos() -> None:
    stream = RequestStream(make_director(*POOL))
    replies = run(stream, [request_headers(), request_body(CHAT_BODY), pb.ProcessingRequest(request_trailers={})])
    assert replies[0].HasField("request_headers")
    assert streamed(replies[1:-1]) == (CHAT_BODY, [False])
    assert replies[-1].HasField("request_trailers")


def test_trailers_ending_a_rejected_body_get_no_reply_after_the_immediate_response() -> None:
    stream = RequestStream(make_director(*POOL))
    replies = run(stream, [request_headers(), request_body(b'{"model": '), pb.ProcessingRequest(request_trailers={})])
    assert [r.WhichOneof("response") for r in replies] == ["immediate_response"]


def routed(director=None, *, stream: bool = False, headers: dict[str, str] | None = None, mode: int = 4):
    director = director or make_director(*POOL)
    s = RequestStream(director)
    body = orjson.dumps({"model": "m", "prompt": "hi", "stream": stream})
    run(s, [request_headers("/v1/completions", extra=headers, response_mode=mode), request_body(body, eos=True)])
    return director, s


def test_json_response_usage_counted_and_inflight_released() -> None:
    director, s = routed()
    state = director.datastore.get(s.decision.endpoints[0].name)
    assert state.inflight_requests == 1
    (h,) = s.handle(response_headers())
    assert set_headers(h.response_headers.response) == {"x-went-into-resp-headers": "true"}
    payload = b'{"id":"1","model":"m","usage":{"prompt_tokens":12,"completion_tokens":30}}'
    first = s.handle(response_body(payload[:20]))
    assert streamed(first, "response_body") == (payload[:20], [False])  # passed through at once
    last = s.handle(response_body(payload[20:], eos=True))
    assert streamed(last, "response_body") == (payload[20:], [True])
    assert state.inflight_requests == 0
    reg = director.telemetry.registry
    labels = {"model_name": "m", "target_model_name": "m"}
    assert reg.get_sample_value("inference_objective_input_tokens_sum", labels) == 12
    assert reg.get_sample_value("inference_objective_output_tokens_sum", labels) == 30
    assert reg.get_sample_value("inference_objective_response_sizes_sum", labels) == len(payload)


def test_sse_chunks_answered_at_once_and_usage_split_across_chunks() -> None:
    director, s = routed(stream=True)
    s.handle(response_headers("text/event-stream"))
    events = (b'data: {"choices":[{"text":"a"}]}\n\n'
              b'data: {"choices":[],"usage":{"prompt_tokens":4,"completion_tokens":6}}\n\ndata: [DONE]\n\n')
    cut = events.index(b"prompt_tokens") + 3
    a = s.handle(response_body(events[:cut]))
    b = s.handle(response_body(events[cut:]))
    c = s.handle(response_body(b"", eos=True))
    assert [streamed(x, "response_body") for x in (a, b, c)] == [
        (events[:cut], [False]), (events[cut:], [False]), (b"", [True]),
    ]
    labels = {"model_name": "m", "target_model_name": "m"}
    assert director.telemetry.registry.get_sample_value("inference_objective_output_tokens_sum", labels) == 6


class StartRecorder:
    typed_name = TypedName("start-recorder", "start-recorder")

    def __init__(self) -> None:
        self.seen: list[str] = []

    def response_started(self, request: LLMRequest, endpoint: EndpointState) -> None:
        self.seen.append(endpoint.name)


def test_first_response_bytes_reach_response_started_plugins_once() -> None:
    director, s = routed(stream=True)
    rec = StartRecorder()
    director.scheduler.response_started_plugins.append(rec)
    s.handle(response_headers("text/event-stream"))
    s.handle(response_body(b""))
    assert rec.seen == []  # headers and empty chunks are not a first token
    s.handle(response_body(b'data: {"choices":[{"text":"a"}]}\n\n'))
    s.handle(response_body(b'data: {"choices":[{"text":"b"}]}\n\ndata: [DONE]\n\n', eos=True))
    assert rec.seen == [s.decision.endpoints[0].name]


def test_an_error_body_is_not_a_first_token() -> None:
    """A 5xx (or 4xx) answer's body arrives at once: read as a first token, latency learners would take
    the failure for a fast prefill and the ledger would think everything before it had prefilled."""
    director, s = routed(stream=True)
    rec = StartRecorder()
    director.scheduler.response_started_plugins.append(rec)
    s.handle(response_headers("application/json", status=503))
    s.handle(response_body(b'{"error":"overloaded"}', eos=True))
    assert rec.seen == []


def test_rewritten_model_is_swapped_back_in_the_response() -> None:
    director, s = routed(headers={"x-llm-d-model-name-rewrite": "m-v2"})
    s.handle(response_headers())
    assert s.handle(response_body(b'{"model":"m-v2","usa')) == []  # held: the name may straddle chunks
    out = s.handle(response_body(b'ge":{"prompt_tokens":1}}', eos=True))
    assert streamed(out, "response_body") == (b'{"model":"m","usage":{"prompt_tokens":1}}', [True])


def test_buffered_response_mode_replies_with_body_response() -> None:
    director, s = routed(headers={"x-llm-d-model-name-rewrite": "m-v2"}, mode=BUFFERED)
    s.handle(response_headers())
    (reply,) = s.handle(response_body(b'{"model": "m-v2"}', eos=True))
    common = reply.response_body.response
    assert common.body_mutation.body == b'{"model": "m"}'
    assert set_headers(common) == {"content-length": "14"}  # Envoy rejects a mutated body of another length


def test_streamed_response_mode_never_changes_lengths() -> None:
    director, s = routed(headers={"x-llm-d-model-name-rewrite": "m-v2"}, mode=ProcessingMode.STREAMED)
    s.handle(response_headers())
    (reply,) = s.handle(response_body(b'{"model": "m-v2"}', eos=True))
    assert not reply.response_body.response.HasField("body_mutation")


def test_close_releases_a_request_whose_response_never_came() -> None:
    director, s = routed()
    name = s.decision.endpoints[0].name
    s.close()
    s.close()
    assert director.datastore.get(name).inflight_requests == 0
    labels = {"model_name": "m"}
    assert director.telemetry.registry.get_sample_value("inference_objective_running_requests", labels) == 0


SESSION_AFFINITY = (
    "apiVersion: llm-d.ai/v1alpha1\nkind: EndpointPickerConfig\n"
    "plugins:\n- {type: session-affinity-scorer}\n- {type: max-score-picker}\n"
)


def test_plugin_response_headers_reach_the_client_and_the_token_pins_the_session() -> None:
    director = make_director(*POOL, "10.0.0.3:8000", config=SESSION_AFFINITY)
    _, first = routed(director)
    (reply,) = first.handle(response_headers())
    headers = set_headers(reply.response_headers.response)
    served = first.decision.endpoints[0]
    assert headers["x-went-into-resp-headers"] == "true"
    assert base64.b64decode(headers["x-session-token"]) == f"{served.endpoint.namespace}/{served.name}".encode()
    first.close()
    picks = set()
    for _ in range(8):  # without the token the max-score picker breaks the all-zero tie at random
        _, other = routed(director, headers={"x-session-token": headers["x-session-token"]})
        picks.add(other.decision.endpoints[0].name)
        other.handle(response_headers())  # answered: closing it is no endpoint fault
        other.close()
    assert picks == {served.name}


def test_no_response_phase_finishes_when_the_stream_closes() -> None:
    """Envoy with response_header_mode SKIP and response body NONE sends nothing after the request:
    the request is released and timed when the stream ends, without usage or response size."""
    director, s = routed(mode=ProcessingMode.NONE)
    name = s.decision.endpoints[0].name
    assert director.datastore.get(name).inflight_requests == 1
    s.close()
    assert director.datastore.get(name).inflight_requests == 0
    reg = director.telemetry.registry
    labels = {"model_name": "m", "target_model_name": "m"}
    assert reg.get_sample_value("inference_objective_request_duration_seconds_count", labels) == 1
    assert reg.get_sample_value("inference_objective_response_sizes_count", labels) is None


def test_the_first_end_releases_the_request_and_later_ends_change_nothing() -> None:
    """The response's end, its trailers and the stream's close each ask to release: the first counts,
    with the usage and size it saw (the exchange's one release-once guard)."""
    director, s = routed()
    name = s.decision.endpoints[0].name
    s.handle(response_headers())
    s.handle(response_body(b'{"usage": {"prompt_tokens": 3, "completion_tokens": 5}}', eos=True))
    assert s.decision.finished and director.datastore.get(name).inflight_requests == 0
    s.handle(pb.ProcessingRequest(response_trailers=pb.HttpTrailers()))
    s.close()
    reg = director.telemetry.registry
    labels = {"model_name": "m", "target_model_name": "m"}
    assert reg.get_sample_value("inference_objective_request_duration_seconds_count", labels) == 1
    assert reg.get_sample_value("inference_objective_output_tokens_sum", labels) == 5
    assert director.datastore.get(name).inflight_requests == 0


@pytest.mark.parametrize("response", [True, False])
def test_a_finished_stream_is_freed_by_reference_counting_alone(response: bool) -> None:
    """No per-request reference cycle: serve tunes the collector down (gen-0 threshold 50,000), so a
    cycle per stream would hold each request's buffers until a late collection (RSS grows under load)."""
    director, s = routed()
    if response:
        s.handle(response_headers())
        s.handle(response_body(b'{"usage": {"prompt_tokens": 3, "completion_tokens": 5}}', eos=True))
    s.close()
    gone = weakref.ref(s)
    gc.disable()
    try:
        del s
        assert gone() is None
    finally:
        gc.enable()


VERIFIER_CONFIG = (
    "apiVersion: inference.networking.x-k8s.io/v1alpha1\nkind: EndpointPickerConfig\n"
    "plugins:\n- {type: destination-endpoint-served-verifier}\n- {type: max-score-picker}\n"
)


@pytest.mark.parametrize(
    ("lb_metadata", "expected"),
    [
        ({"x-gateway-destination-endpoint-served": "10.0.0.2:8000"}, "10.0.0.2:8000"),
        ({"x-gateway-destination-endpoint": "10.0.0.1:8000"}, "fail: missing destination endpoint served metadata"),
        (None, "fail: missing envoy lb metadata"),
    ],
)
def test_served_endpoint_from_response_metadata_reaches_the_client(lb_metadata, expected) -> None:
    _, s = routed(make_director(*POOL, config=VERIFIER_CONFIG))
    (h,) = s.handle(response_headers(lb_metadata=lb_metadata))
    assert set_headers(h.response_headers.response)["x-conformance-test-served-endpoint"] == expected


def test_a_5xx_answer_is_an_endpoint_fault_and_gets_no_plugin_headers() -> None:
    director = make_director(*POOL, "10.0.0.3:8000", config=SESSION_AFFINITY)
    for _ in range(10):  # every answer is a 503: some endpoint reaches 3 faults in a row
        _, s = routed(director)
        victim = s.decision.endpoints[0]
        (reply,) = s.handle(response_headers(status=503, eos=True))
        assert "x-session-token" not in set_headers(reply.response_headers.response)  # never pin a session to it
        if victim.health.state.value == "ejected":
            break
    assert victim.health.state.value == "ejected" and victim.health.reason == "http-503"
    assert victim.inflight_requests == 0


def test_a_4xx_answer_is_no_endpoint_fault_but_plugins_hear_a_failure() -> None:
    director, s = routed()
    state = s.decision.endpoints[0]
    state.health.failures = 2
    s.handle(response_headers(status=400, eos=True))
    assert state.health.failures == 0  # the engine answered: alive


def test_a_stream_that_ends_without_any_response_is_not_judged() -> None:
    director, s = routed()  # e.g. the client left: Envoy cancels the ext_proc stream
    state = s.decision.endpoints[0]
    state.health.failures = 2
    s.close()
    assert state.health.failures == 2 and state.inflight_requests == 0  # neither a fault nor a success


def test_an_answer_from_another_endpoint_than_the_primary_means_the_primary_failed() -> None:
    _, s = routed()
    primary = s.decision.endpoints[0]
    other = next(hp for hp in POOL if hp != primary.hostport)
    s.handle(response_headers(eos=True, lb_metadata={"x-gateway-destination-endpoint-served": other}))
    assert primary.health.failures == 1
    _, fine = routed()
    fine.handle(response_headers(eos=True, lb_metadata={"x-gateway-destination-endpoint-served": fine.decision.endpoints[0].hostport}))
    assert fine.decision.endpoints[0].health.failures == 0
