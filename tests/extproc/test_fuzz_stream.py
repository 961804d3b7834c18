"""Fuzzing the ext_proc state machine: hostile bodies and arbitrary message orders never crash a stream.

Every message either gets replies or raises ``ProtocolViolation`` (which the servicer turns into a clean
INVALID_ARGUMENT); any other exception is what would surface as INTERNAL and fails here. After the
stream closes, nothing the request took is left behind (in-flight counts, running gauge).
"""

from __future__ import annotations

import orjson
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb
from hypothesis import HealthCheck, given, settings

from epp.director import Director
from epp.extproc.stream import ProtocolViolation, RequestStream
from tests.extproc.builders import CHAT_BODY, chunked, immediate, make_director, request_body, request_headers
from tests.extproc.fuzz_inputs import message_sequences, request_then_split_body

POOL = ("10.0.0.1:8000", "10.0.0.2:8000")
MAX_BODY = 64 * 1024
FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def check_reply(reply: pb.ProcessingResponse) -> None:
    """A reply Envoy can act on: exactly one response kind; an immediate answer is an OpenAI error."""
    assert reply.WhichOneof("response") is not None
    if reply.HasField("immediate_response"):
        status, headers, payload = immediate(reply)
        assert 400 <= status < 600 and headers["content-type"] == "application/json"
        assert set(payload["error"]) >= {"message", "type", "code"}


def drive(director: Director, messages: list[pb.ProcessingRequest]) -> tuple[list[pb.ProcessingResponse], bool]:
    """Feed messages as the servicer does; returns the replies and whether the stream was aborted."""
    stream = RequestStream(director, MAX_BODY)
    replies: list[pb.ProcessingResponse] = []
    try:
        for message in messages:
            try:
                out = stream.handle(message)
            except ProtocolViolation:
                return replies, True
            for reply in out:
                check_reply(reply)
            replies.extend(out)
        return replies, False
    finally:
        stream.close()


def assert_nothing_held(director: Director) -> None:
    for state in director.datastore.endpoints():
        assert (state.inflight_requests, state.inflight_tokens) == (0, 0), state.name
    for metric in director.telemetry.registry.collect():
        if metric.name == "inference_objective_running_requests":
            assert all(sample.value == 0 for sample in metric.samples)


@FUZZ
@given(messages=message_sequences)
def test_any_message_sequence_gets_replies_or_a_clean_violation(messages: list[pb.ProcessingRequest]) -> None:
    director = make_director(*POOL)
    drive(director, messages)
    assert_nothing_held(director)


@FUZZ
@given(messages=request_then_split_body())
def test_well_ordered_request_with_hostile_body_always_ends_in_a_defined_answer(
    messages: list[pb.ProcessingRequest],
) -> None:
    director = make_director(*POOL)
    replies, aborted = drive(director, messages)
    assert not aborted
    kinds = [r.WhichOneof("response") for r in replies]
    assert kinds[:1] in (["request_headers"], ["immediate_response"]), kinds  # routed or refused, never silent
    if kinds[0] == "immediate_response":
        assert len(kinds) == 1
    else:
        sent = b"".join(m.request_body.body for m in messages[1:])
        forwarded = b"".join(r.request_body.response.body_mutation.streamed_response.body for r in replies[1:])
        assert forwarded == sent or orjson.loads(forwarded)  # unchanged, or re-serialized by a model rewrite
    assert_nothing_held(director)


def outcome(director: Director, messages: list[pb.ProcessingRequest]) -> tuple[object, ...]:
    replies, aborted = drive(director, messages)
    head = replies[0]
    if head.HasField("immediate_response"):
        return ("immediate", immediate(head)[0], aborted)
    forwarded = b"".join(r.request_body.response.body_mutation.streamed_response.body for r in replies[1:])
    return ("routed", forwarded, aborted)


BOUNDARY_BODIES = [
    CHAT_BODY,
    orjson.dumps({"model": "m\u00e9\u2603", "prompt": ["a", "b"], "stream": True}),
    b'{"model": "m", "messages": [{"role": "user", "content": "\xff\xfe"}]}',  # invalid UTF-8
    b'{"model": "m", "messages": [',  # truncated
]


def test_every_byte_boundary_split_gives_the_unsplit_outcome() -> None:
    """Duplex bodies can be cut anywhere (even inside a UTF-8 sequence): the answer must not depend on where."""
    for body in BOUNDARY_BODIES:
        director = make_director(*POOL)
        expected = outcome(director, [request_headers(), *chunked(body, len(body))])
        for cut in range(len(body) + 1):
            messages = [request_headers(), request_body(body[:cut]), request_body(body[cut:], eos=True)]
            assert outcome(director, messages) == expected, (body, cut)
        assert_nothing_held(director)

