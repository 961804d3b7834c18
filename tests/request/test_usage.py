"""Usage from JSON responses and SSE streams split at arbitrary byte boundaries."""

from __future__ import annotations

import orjson
import pytest

from epp.request.usage import MAX_SSE_LINE_BYTES, GrpcUsageReader, SSEUsageReader, Usage, usage_from_json

CHAT_STREAM = (
    b'data: {"id":"1","choices":[{"delta":{"content":"Hel"}}],"usage":null}\n\n'
    b'data: {"id":"1","choices":[{"delta":{"content":"lo"}}]}\n\n'
    b'data: {"id":"1","choices":[],"usage":{"prompt_tokens":11,"completion_tokens":2,"total_tokens":13,'
    b'"prompt_tokens_details":{"cached_tokens":8}}}\n\n'
    b"data: [DONE]\n\n"
)
RESPONSES_STREAM = (
    b'event: response.created\ndata: {"type":"response.created","response":{"usage":null}}\n\n'
    b'event: response.completed\ndata: {"type":"response.completed","response":{"usage":'
    b'{"input_tokens":5,"output_tokens":3,"input_tokens_details":{"cached_tokens":0}}}}\n\n'
)


def feed_split(data: bytes, size: int) -> Usage:
    reader = SSEUsageReader()
    for i in range(0, len(data), size):
        reader.feed(data[i:i + size])
    reader.close()
    return reader.usage


@pytest.mark.parametrize("size", [1, 3, 7, 64, 10_000])
def test_sse_usage_survives_any_split(size: int) -> None:
    assert feed_split(CHAT_STREAM, size) == Usage(11, 2, 8)


@pytest.mark.parametrize("size", [1, 5, 10_000])
def test_responses_api_stream(size: int) -> None:
    assert feed_split(RESPONSES_STREAM, size) == Usage(5, 3, 0)


def test_sse_fields_merge_across_events() -> None:
    data = b'data: {"usage":{"prompt_tokens":4}}\n\ndata: {"usage":{"completion_tokens":9}}\n\n'
    assert feed_split(data, 10) == Usage(4, 9, None)


def test_last_line_without_newline_counts() -> None:
    reader = SSEUsageReader()
    reader.feed(b'data: {"usage":{"prompt_tokens":1,"completion_tokens":2}}')
    reader.close()
    assert reader.usage == Usage(1, 2, None)


def test_crlf_and_garbage_lines() -> None:
    data = b'data: {"usage": broken\r\n\r\ndata: {"usage":{"prompt_tokens":3,"completion_tokens":4}}\r\n\r\n'
    assert feed_split(data, 5) == Usage(3, 4, None)


def test_overlong_line_is_skipped_without_keeping_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("epp.request.usage.MAX_SSE_LINE_BYTES", 50)
    reader = SSEUsageReader()
    reader.feed(b'data: {"usage":{"prompt_tokens":1}} ' + b"x" * 40)
    reader.feed(b"y" * 40)
    assert len(reader._partial) <= 50
    reader.feed(b'\ndata: {"usage":{"completion_tokens":2}}\n')
    reader.close()
    assert reader.usage == Usage(None, 2, None)


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ({"usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}}, Usage(10, 5, None)),
        ({"usage": {"input_tokens": 7, "output_tokens": 1, "input_tokens_details": {"cached_tokens": 4}}},
         Usage(7, 1, 4)),
        ({"choices": []}, Usage()),
        ({"usage": None}, Usage()),
        ([1, 2], Usage()),
    ],
)
def test_json_usage(body: object, expected: Usage) -> None:
    assert usage_from_json(orjson.dumps(body)) == expected


def test_json_usage_of_non_json_is_empty() -> None:
    assert not usage_from_json(b"<html>").known


def test_as_dict_has_only_reported_counts() -> None:
    assert Usage(3, None, 1).as_dict() == {"prompt_tokens": 3, "cached_tokens": 1}


# Anthropic Messages API (anthropic-parser): usage split over message_start and message_delta
ANTHROPIC_STREAM = (
    b'event: message_start\ndata: {"type":"message_start","message":{"id":"m","usage":'
    b'{"input_tokens":25,"cache_read_input_tokens":16,"output_tokens":1}}}\n\n'
    b'event: content_block_delta\ndata: {"type":"content_block_delta","delta":{"text":"Hi"}}\n\n'
    b'event: message_delta\ndata: {"type":"message_delta","delta":{"stop_reason":"end_turn"},"usage":{"output_tokens":15}}\n\n'
    b'event: message_stop\ndata: {"type":"message_stop"}\n\n'
)


@pytest.mark.parametrize("size", [1, 5, 10_000])
def test_anthropic_stream_and_json(size: int) -> None:
    assert feed_split(ANTHROPIC_STREAM, size).as_dict() == {"prompt_tokens": 25, "completion_tokens": 15, "cached_tokens": 16}
    body = orjson.dumps({"type": "message", "usage": {"input_tokens": 7, "output_tokens": 3, "cache_read_input_tokens": 4}})
    assert usage_from_json(body).as_dict() == {"prompt_tokens": 7, "completion_tokens": 3, "cached_tokens": 4}


def _frame(payload: bytes) -> bytes:
    return b"\x00" + len(payload).to_bytes(4, "big") + payload


# vLLM gRPC: GenerateResponse{chunk{token_ids: [5]}} twice, then {complete{finish_reason "stop", prompt 9,
# completion 2, cached 4}} — hand-encoded from vLLM's field numbers
GRPC_STREAM = (_frame(bytes.fromhex("1203" "0a0105")) * 2
               + _frame(bytes.fromhex("120c" "120473746f70" "1809" "2002" "2804")))


@pytest.mark.parametrize("size", [1, 4, 9, 10_000])
def test_grpc_generate_stream_usage(size: int) -> None:
    reader = GrpcUsageReader()
    for i in range(0, len(GRPC_STREAM), size):
        reader.feed(GRPC_STREAM[i:i + size])
    reader.close()
    assert reader.usage.as_dict() == {"prompt_tokens": 9, "completion_tokens": 2, "cached_tokens": 4}


def test_grpc_reader_skips_oversized_compressed_and_garbage_frames() -> None:
    reader = GrpcUsageReader()
    reader.feed(b"\x01" + (3).to_bytes(4, "big") + b"abc")  # compressed: skipped
    reader.feed(b"\x00" + (MAX_SSE_LINE_BYTES + 1).to_bytes(4, "big") + b"x" * 100)  # too long: skipped unread
    reader.feed(b"x" * (MAX_SSE_LINE_BYTES + 1 - 100))
    reader.feed(_frame(b"\xff\xff"))  # not protobuf
    assert reader.pending_bytes < 16
    reader.feed(GRPC_STREAM)
    assert reader.usage.as_dict() == {"prompt_tokens": 9, "completion_tokens": 2, "cached_tokens": 4}
