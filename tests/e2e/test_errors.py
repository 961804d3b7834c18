"""Bad input and unroutable requests get their status and an OpenAI JSON error, through Envoy, not a crash."""

from __future__ import annotations

import pytest

from tests.e2e.harness import MAX_BODY_BYTES, Reply, Stack, chat, logged, post


def assert_openai_error(reply: Reply, status: int) -> dict[str, object]:
    assert reply.status == status, reply.body
    assert reply.headers["content-type"] == "application/json"
    error = reply.json()["error"]
    assert isinstance(error["message"], str) and error["message"]
    assert set(error) >= {"message", "type", "code"}
    return error  # type: ignore[no-any-return]


BAD_BODIES: list[tuple[str, bytes, int, str]] = [
    ("malformed-json", b'{"model": "m", "messages": [', 400, "invalid_json"),
    ("not-utf8", b'{"model": "m\xff\xfe", "prompt": "x"}', 400, "invalid_json"),
    ("missing-model", b'{"messages": [{"role": "user", "content": "hi"}]}', 400, "model_not_found"),
    ("too-large", b'{"model": "m", "prompt": "' + b"x" * (MAX_BODY_BYTES + 1) + b'"}', 413, "request_too_large"),
]


@pytest.mark.parametrize("variant", ["duplex", "buffered"])
@pytest.mark.parametrize(("case", "body", "status", "code"), BAD_BODIES, ids=[c[0] for c in BAD_BODIES])
async def test_bad_input_gets_its_status_and_openai_error(
    stack: Stack, variant: str, case: str, body: bytes, status: int, code: str
) -> None:
    envoy = stack.envoy(variant)
    reply = await post(envoy, body)
    assert assert_openai_error(reply, status)["code"] == code
    entry = logged(envoy, [reply.request_id])[reply.request_id]
    assert entry.upstream is None  # answered by epp, never reached an engine
    assert entry.details is not None and entry.details.startswith("epp_")


@pytest.mark.parametrize("variant", ["subset-empty", "subset-nomatch"])
async def test_no_candidate_endpoints_is_503(stack: Stack, variant: str) -> None:
    reply = await post(stack.envoy(variant), chat())
    assert assert_openai_error(reply, 503)["code"] == "no_endpoints"
    assert reply.headers["x-llm-d-request-dropped-reason"] == "rejected-no-endpoints"
