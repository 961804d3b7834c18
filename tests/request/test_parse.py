"""OpenAI body + headers → LLMRequest, and every way a body is refused."""

from __future__ import annotations

import orjson
import pytest

from epp.request import RequestError, RequestKind
from epp.request.parse import parse_request, request_path

CHAT = {":path": "/v1/chat/completions"}


def parse(body: object, headers: dict[str, str] | None = None):
    raw = body if isinstance(body, bytes) else orjson.dumps(body)
    return parse_request("rid", headers if headers is not None else {":path": "/v1/completions"}, raw)


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({":path": "/v1/chat/completions?x=1"}, "/v1/chat/completions"),
        ({"x-original-path": "/v1/embeddings"}, "/v1/embeddings"),
        ({"x-forwarded-path": "/v1/responses?a=b"}, "/v1/responses"),
        ({":path": "", "x-original-path": "/v1/completions"}, "/v1/completions"),
        ({":path": "/a", "x-original-path": "/b"}, "/a"),
        ({}, "/v1/completions"),
    ],
)
def test_request_path_precedence(headers: dict[str, str], expected: str) -> None:
    assert request_path(headers) == expected


@pytest.mark.parametrize(
    ("path", "body", "kind", "prompt", "tokens"),
    [
        ("/v1/completions", {"model": "m", "prompt": "hello"}, RequestKind.COMPLETIONS, b"hello", None),
        ("/v1/completions", {"model": "m", "prompt": ["a", "b"]}, RequestKind.COMPLETIONS, b'["a","b"]', None),
        ("/v1/completions", {"model": "m", "prompt": [1, 2, 3]}, RequestKind.COMPLETIONS, b"", [1, 2, 3]),
        ("/v1/completions", {"model": "m", "prompt": [[1, 2], [3]]}, RequestKind.COMPLETIONS, b"", [1, 2, 3]),
        ("/v1/completions", {"model": "m"}, RequestKind.COMPLETIONS, b"", None),
        (
            "/v1/chat/completions",
            {"model": "m", "messages": [{"role": "user", "content": "hi"}]},
            RequestKind.CHAT_COMPLETIONS,
            b'[{"content":"hi","role":"user"}]',
            None,
        ),
        (
            "/openai/v1/chat/completions",
            {"model": "m", "messages": []},
            RequestKind.CHAT_COMPLETIONS,
            b"[]",
            None,
        ),
        (
            "/v1/responses",
            {"model": "m", "input": "x", "instructions": "be brief"},
            RequestKind.RESPONSES,
            b'[{"instructions":"be brief"},{"tools":null},{"input":"x"}]',
            None,
        ),
        ("/v1/embeddings", {"model": "m", "input": ["a"]}, RequestKind.EMBEDDINGS, b'["a"]', None),
    ],
)
def test_kinds_and_prompts(path: str, body: dict, kind: RequestKind, prompt: bytes, tokens: list[int] | None) -> None:
    req = parse(body, {":path": path})
    assert (req.kind, req.model, req.target_model, req.prompt_bytes, req.prompt_token_ids) == (
        kind, "m", "m", prompt, tokens,
    )
    assert req.path == path


def test_chat_prompt_bytes_do_not_depend_on_key_order() -> None:
    a = parse(b'{"model":"m","messages":[{"role":"user","content":"hi"}]}', CHAT)
    b = parse(b'{"messages":[{"content":"hi","role":"user"}],"model":"m"}', CHAT)
    assert a.prompt_bytes == b.prompt_bytes


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ({"model": "m", "max_tokens": 7}, 7),
        ({"model": "m", "max_completion_tokens": 9, "max_tokens": 7}, 9),
        ({"model": "m", "max_tokens": True}, None),
        ({"model": "m"}, None),
    ],
)
def test_max_tokens(body: dict, expected: int | None) -> None:
    assert parse(body, CHAT).max_tokens == expected


def test_flags_and_identity_fields() -> None:
    req = parse({"model": "m", "stream": True, "user": "u1", "owned_by": "sglang"}, CHAT)
    assert (req.stream, req.user, req.owned_by) == (True, "u1", "sglang")
    assert parse({"model": "m", "stream": "yes"}, CHAT).stream is False


@pytest.mark.parametrize(
    ("headers", "objective", "fairness", "target", "session"),
    [
        ({}, None, "default-flow", "m", None),
        (
            {"x-llm-d-inference-objective": "critical", "x-llm-d-inference-fairness-id": "tenant-a",
             "x-llm-d-model-name-rewrite": "m2", "x-session-token": "tok"},
            "critical", "tenant-a", "m2", "tok",
        ),
        (
            {"x-gateway-inference-objective": "old", "x-gateway-inference-fairness-id": "t",
             "x-gateway-model-name-rewrite": "m3"},
            "old", "t", "m3", None,
        ),
        (
            {"x-llm-d-inference-objective": "new", "x-gateway-inference-objective": "old"},
            "new", "default-flow", "m", None,
        ),
    ],
)
def test_control_headers(headers: dict, objective: str | None, fairness: str, target: str, session: str | None) -> None:
    req = parse({"model": "m"}, {**CHAT, **headers})
    assert (req.objective, req.fairness_id, req.target_model, req.session_token) == (objective, fairness, target, session)
    assert req.model == "m"


@pytest.mark.parametrize(
    ("body", "code"),
    [
        (b'{"model": "m"', "invalid_json"),
        (b'{"model": "\xff"}', "invalid_json"),
        (b"", "invalid_body"),
        (b"[1, 2]", "invalid_body"),
        (b'"model"', "invalid_body"),
        (b'{"prompt": "x"}', "model_not_found"),
        (b'{"model": 3}', "model_not_found"),
        (b'{"model": ""}', "model_not_found"),
        (b'{"model": "m", "prompt": 5}', "invalid_body"),
    ],
)
def test_bad_bodies_are_400(body: bytes, code: str) -> None:
    with pytest.raises(RequestError) as info:
        parse(body)
    assert (info.value.status, info.value.code) == (400, code)
    error = orjson.loads(info.value.to_json())["error"]
    assert error["type"] == "invalid_request_error" and error["message"]


@pytest.mark.parametrize("field", ["messages", "prompt"])
def test_prompt_nested_deeper_than_json_can_be_written_is_400(field: str) -> None:
    """orjson reads 1024 levels but writes 254: a 300-deep prompt must be a 400, not a TypeError."""
    body = b'{"model": "m", "' + field.encode() + b'": ' + b"[" * 300 + b'"x"' + b"]" * 300 + b"}"
    with pytest.raises(RequestError) as info:
        parse_request("rid", CHAT if field == "messages" else {":path": "/v1/completions"}, body)
    assert (info.value.status, info.value.code) == (400, "invalid_body")


def test_chat_messages_must_be_a_list() -> None:
    with pytest.raises(RequestError) as info:
        parse({"model": "m", "messages": "hi"}, CHAT)
    assert info.value.status == 400


@pytest.mark.parametrize("body", [b"", b"not json", b'{"model": 1}', b'{"model": "m"}'])
def test_other_paths_pass_through(body: bytes) -> None:
    req = parse_request("rid", {":path": "/v1/models", ":method": "POST"}, body)
    assert req.kind is RequestKind.OTHER
    assert req.model == ("m" if body == b'{"model": "m"}' else "")
