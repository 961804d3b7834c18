"""Hypothesis strategies for hostile ext_proc traffic: odd bodies and arbitrary message sequences.

Shared by the state-machine fuzz tests and the ones over a real grpc.aio server, so both explore the
same input space. Sizes stay small (bodies ≤ a few KB, except the deliberately huge strings) so a
few hundred examples run in seconds on a busy 2-core box.
"""

from __future__ import annotations

import orjson
from envoy.config.core.v3 import base_pb2
from envoy.extensions.filters.http.ext_proc.v3.processing_mode_pb2 import ProcessingMode
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb
from hypothesis import strategies as st

from tests.extproc.builders import request_body, request_headers, response_body, response_headers

PATHS = ("/v1/chat/completions", "/v1/completions", "/v1/responses", "/v1/embeddings", "/v1/models", "/x")
MODES = (
    ProcessingMode.NONE, ProcessingMode.STREAMED, ProcessingMode.BUFFERED, ProcessingMode.BUFFERED_PARTIAL,
    ProcessingMode.FULL_DUPLEX_STREAMED,
)

json_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**63), 2**64 - 1), st.floats(allow_nan=False), st.text(max_size=20)
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)),
    max_leaves=12,
)
odd_models = st.one_of(st.text(max_size=30), json_values, st.just(""))


@st.composite
def inference_objects(draw: st.DrawFn) -> dict[str, object]:
    """Bodies shaped like OpenAI requests whose fields may have any type."""
    body: dict[str, object] = {}
    if draw(st.booleans()):
        body["model"] = draw(odd_models)
    for key in ("messages", "prompt", "input", "stream", "max_tokens", "user", "instructions", "tools"):
        if draw(st.integers(0, 3)) == 0:
            body[key] = draw(json_values)
    if draw(st.booleans()):
        body["messages"] = [{"role": "user", "content": draw(st.text(max_size=40))}]
    return body


def nested(depth: int, field: str) -> bytes:
    """Nesting around orjson's limits (reads 1024 levels, writes 254) in a parsed or an unparsed field."""
    return b'{"model":"m","' + field.encode() + b'":' + b"[" * depth + b"1" + b"]" * depth + b"}"


def with_duplicate_keys(body: dict[str, object]) -> bytes:
    raw = orjson.dumps(body)
    return b'{"model":1,"messages":"dup",' + raw[1:] if raw != b"{}" else b'{"model":"a","model":"b"}'


bodies = st.one_of(
    inference_objects().map(orjson.dumps),
    inference_objects().map(with_duplicate_keys),
    st.tuples(inference_objects().map(orjson.dumps), st.integers(0, 200)).map(lambda t: t[0][: t[1]]),  # truncated
    st.builds(nested, st.sampled_from([10, 254, 255, 256, 600, 1023, 1025, 5000]),
              st.sampled_from(["messages", "prompt", "input", "metadata"])),
    st.builds(lambda n, c: b'{"model":"' + c * n + b'","prompt":"' + c * n + b'"}',
              st.sampled_from([1000, 70_000]), st.sampled_from([b"a", b"\\u00e9", b"\xe9", b"\\ud800", b"\\"])),
    st.binary(max_size=300),  # includes invalid UTF-8
    json_values.map(orjson.dumps),
    st.just(b""),
)


def headers_message(draw: st.DrawFn) -> pb.ProcessingRequest:
    extra = {}
    if draw(st.booleans()):
        extra["x-llm-d-model-name-rewrite"] = draw(st.text(alphabet="abc-", max_size=6))
    message = request_headers(
        draw(st.sampled_from(PATHS)),
        eos=draw(st.booleans()),
        mode=draw(st.one_of(st.none(), st.sampled_from(MODES))),
        response_mode=draw(st.sampled_from(MODES)),
        extra=extra,
        method=draw(st.sampled_from(["POST", "GET"])),
    )
    if draw(st.booleans()):  # no request id: the picker generates one
        del message.request_headers.headers.headers[3]
    if draw(st.integers(0, 4)) == 0:  # a header value that is not latin-1 clean and set via `value`
        message.request_headers.headers.headers.append(base_pb2.HeaderValue(key="x-odd", value="\u2603\x00"))
    return message


@st.composite
def any_message(draw: st.DrawFn) -> pb.ProcessingRequest:
    """One message of any kind, in no particular order relative to the others."""
    kind = draw(st.sampled_from(
        ["request_headers", "request_body", "request_trailers", "response_headers", "response_body",
         "response_trailers", "empty", "subset"]
    ))
    if kind == "request_headers":
        return headers_message(draw)
    if kind == "request_body":
        return request_body(draw(bodies), eos=draw(st.booleans()))
    if kind == "subset":
        hint = draw(st.one_of(st.lists(st.one_of(st.text(max_size=15), st.integers())), st.text(max_size=20), st.integers()))
        return request_body(draw(st.binary(max_size=20)), eos=draw(st.booleans()), subset=hint)
    if kind == "response_headers":
        return response_headers(draw(st.sampled_from(["application/json", "text/event-stream"])), eos=draw(st.booleans()))
    if kind == "response_body":
        return response_body(draw(st.one_of(st.binary(max_size=200), sse_bytes)), eos=draw(st.booleans()))
    if kind == "request_trailers":
        return pb.ProcessingRequest(request_trailers=pb.HttpTrailers())
    if kind == "response_trailers":
        return pb.ProcessingRequest(response_trailers=pb.HttpTrailers())
    return pb.ProcessingRequest()


sse_bytes = st.lists(
    st.one_of(
        st.just(b'data: {"usage":{"prompt_tokens":3,"completion_tokens":"x"}}\n\n'),
        st.just(b"data: [DONE]\n\n"),
        json_values.map(lambda v: b'data: {"usage":' + orjson.dumps(v) + b"}\n"),
        st.binary(max_size=40),
    ),
    max_size=5,
).map(b"".join)

message_sequences = st.lists(any_message(), min_size=1, max_size=8)


@st.composite
def request_then_split_body(draw: st.DrawFn) -> list[pb.ProcessingRequest]:
    """A well-ordered duplex request whose (possibly hostile) body arrives in arbitrary pieces."""
    body = draw(bodies)
    cuts = sorted(draw(st.lists(st.integers(0, len(body)), max_size=6)))
    parts = [body[a:b] for a, b in zip([0, *cuts], [*cuts, len(body)], strict=True)]
    headers = request_headers(draw(st.sampled_from(PATHS[:4])))
    return [headers, *[request_body(p, eos=i == len(parts) - 1) for i, p in enumerate(parts)]]
