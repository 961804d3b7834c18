"""OpenAI-style HTTP request (lower-cased headers + body bytes) → ``LLMRequest``.

Only what routing needs is extracted; the body is never rewritten here. Strictness follows the
reference picker's OpenAI parser: a body that is not a JSON object, or lacks a string ``model``, is a
400 on the inference paths; anything else (``/v1/models``, health probes, unknown APIs) passes
through unparsed so it can still be routed.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson

from epp.request.errors import RequestError
from epp.request.headers import FAIRNESS_HEADERS, MODEL_REWRITE_HEADERS, OBJECTIVE_HEADERS, SESSION_TOKEN_HEADER
from epp.request.types import LLMRequest, RequestKind

DEFAULT_PATH = "/v1/completions"
PATH_HEADERS = (":path", "x-original-path", "x-forwarded-path")

# Current llm-d header first, then the GIE alias it replaced (gie-facts A4).
DEFAULT_FAIRNESS_ID = "default-flow"

# Suffix → kind; checked in order, so chat wins over plain completions. Suffixes (not exact paths)
# because gateways often mount the API under a prefix such as /openai/v1/….
_KINDS = (
    ("/chat/completions", RequestKind.CHAT_COMPLETIONS),
    ("/completions", RequestKind.COMPLETIONS),
    ("/responses", RequestKind.RESPONSES),
    ("/embeddings", RequestKind.EMBEDDINGS),
)


def request_path(headers: Mapping[str, str]) -> str:
    """The API path the client called, query stripped: ``:path``, else the rewrite headers, else the default."""
    for name in PATH_HEADERS:
        value = headers.get(name)
        if value:
            return value.split("?", 1)[0]
    return DEFAULT_PATH


def request_kind(path: str) -> RequestKind:
    trimmed = path.rstrip("/")
    for suffix, kind in _KINDS:
        if trimmed.endswith(suffix):
            return kind
    return RequestKind.OTHER


def first_header(headers: Mapping[str, str], names: tuple[str, ...]) -> str | None:
    for name in names:
        value = headers.get(name)
        if value:
            return value
    return None


def parse_request(request_id: str, headers: Mapping[str, str], body: bytes) -> LLMRequest:
    """Build the request from what the gateway sent; raises ``RequestError`` (400) on unusable inference bodies."""
    path = request_path(headers)
    kind = request_kind(path)
    fields: dict[str, Any] = {}
    if kind is RequestKind.OTHER:
        data = _try_object(body)
    else:
        data = load_object(body)
        require_model(data)
        fields = extract_fields(kind, data)
    return envelope(request_id, headers, path, kind, data, fields)


def require_model(data: dict[str, Any]) -> None:
    model = data.get("model")
    if not isinstance(model, str) or not model:
        raise RequestError(400, "model not found in request body", code="model_not_found")


def envelope(
    request_id: str, headers: Mapping[str, str], path: str, kind: RequestKind, data: dict[str, Any] | None,
    fields: Mapping[str, Any],
) -> LLMRequest:
    """The request around parsed body fields: the model (body, then rewrite headers), objective,
    fairness id and session token from the headers — the same for every parser."""
    model = data.get("model") if isinstance(data, dict) else None
    rewrite = first_header(headers, MODEL_REWRITE_HEADERS)
    return LLMRequest(
        request_id=request_id,
        kind=kind,
        model=model if isinstance(model, str) else "",
        path=path,
        target_model=rewrite or "",
        objective=first_header(headers, OBJECTIVE_HEADERS),
        fairness_id=first_header(headers, FAIRNESS_HEADERS) or DEFAULT_FAIRNESS_ID,
        session_token=headers.get(SESSION_TOKEN_HEADER) or None,
        headers=dict(headers),
        body=data,
        **fields,
    )


def load_object(body: bytes) -> dict[str, Any]:
    if not body:
        raise RequestError(400, "request body is empty; expected a JSON object", code="invalid_body")
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise RequestError(400, f"request body is not valid JSON: {exc}", code="invalid_json") from None
    if not isinstance(data, dict):
        raise RequestError(400, "request body must be a JSON object", code="invalid_body")
    return data


def _try_object(body: bytes) -> dict[str, Any] | None:
    """Pass-through paths: use the body if it happens to be a JSON object, never reject it."""
    if not body:
        return None
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    return data if isinstance(data, dict) else None


def extract_fields(kind: RequestKind, data: dict[str, Any]) -> dict[str, Any]:
    """The routing-relevant fields of an inference body (prompt bytes, token ids, limits, flags)."""
    fields: dict[str, Any] = {
        "stream": data.get("stream") is True,
        "max_tokens": _int_field(data, "max_completion_tokens", "max_tokens", "max_output_tokens"),
        "user": _str_field(data, "user"),
        "owned_by": _str_field(data, "owned_by"),
    }
    if kind is RequestKind.CHAT_COMPLETIONS:
        messages = data.get("messages")
        if messages is not None and not isinstance(messages, list):
            raise RequestError(400, "'messages' must be a list", code="invalid_body")
        fields["prompt_bytes"] = dumps(messages or [])
    elif kind is RequestKind.COMPLETIONS:
        fields.update(_prompt_fields(data.get("prompt")))
    elif kind is RequestKind.RESPONSES:
        parts = [{"instructions": data.get("instructions")}, {"tools": data.get("tools")}, {"input": data.get("input")}]
        fields["prompt_bytes"] = dumps(parts)
    elif kind is RequestKind.EMBEDDINGS:
        fields["prompt_bytes"] = dumps(data.get("input"))
    elif kind is RequestKind.MESSAGES:
        messages = data.get("messages")
        if not isinstance(messages, list) or not messages:
            raise RequestError(400, "'messages' must be a non-empty list", code="invalid_body")
        # system and tools lead the engine's prompt, so they lead the hashed bytes too
        fields["prompt_bytes"] = dumps([{"system": data.get("system")}, {"tools": data.get("tools")}, {"messages": messages}])
    return fields


def _prompt_fields(prompt: object) -> dict[str, Any]:
    """Completions ``prompt``: text, a batch of texts, token ids, or a batch of token-id lists."""
    if isinstance(prompt, str):
        return {"prompt_bytes": prompt.encode()}
    if isinstance(prompt, list) and prompt:
        if all(isinstance(t, int) and not isinstance(t, bool) for t in prompt):
            return {"prompt_token_ids": list(prompt)}
        if all(isinstance(p, list) and all(isinstance(t, int) for t in p) for p in prompt):
            return {"prompt_token_ids": [t for p in prompt for t in p]}
        return {"prompt_bytes": dumps(prompt)}
    if prompt is None:
        return {}
    raise RequestError(400, "'prompt' must be a string, a list of strings or token ids", code="invalid_body")


def dumps(value: object) -> bytes:
    """Compact JSON with sorted keys: equal content gives equal bytes whatever the client's key order.

    orjson reads 1024 levels of nesting but writes only 254, so a deep (hostile) prompt is a 400 here.
    """
    try:
        return orjson.dumps(value, option=orjson.OPT_SORT_KEYS)
    except orjson.JSONEncodeError:
        raise RequestError(400, "request body is nested too deeply", code="invalid_body") from None


def _int_field(data: dict[str, Any], *names: str) -> int | None:
    for name in names:
        value = data.get(name)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    return None


def _str_field(data: dict[str, Any], name: str) -> str | None:
    value = data.get(name)
    return value if isinstance(value, str) else None
