"""OpenAI request parsing and response bodies, shaped like vLLM's OpenAI-compatible server.

Multimodal chat parts (``image_url``, ``audio_url``, ``video_url``, ``input_audio``: the types llm-d's
sidecar fans out to encoders) are a cost model, not a model: each item becomes ``MEDIA_ITEM_TOKENS``
placeholder tokens derived from its URL (or inline data), placed before the text so a conversation that
re-sends its image keeps a cacheable prefix, as vLLM's multimodal hashes keep one.
"""

from __future__ import annotations

import hashlib
from array import array
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from epp._util import byte_tokenizer as tokenizer
from epp.request import RequestError

CHAT = "chat"
COMPLETIONS = "completions"


def bad_request(message: str) -> RequestError:
    return RequestError(400, message, error_type="BadRequestError", code="400")


MEDIA_TYPES = ("image_url", "audio_url", "video_url", "input_audio")
MEDIA_ITEM_TOKENS = 576
"""Placeholder tokens per media item: LLaVA-1.5's 24 × 24 patches of a 336-pixel image."""


@dataclass(frozen=True, slots=True)
class MediaItem:
    """One multimodal content part: ``url`` (empty for inline data) and the part as the client sent it."""

    part: Mapping[str, Any]
    url: str
    tokens: tuple[int, ...]


def media_item(part: Mapping[str, Any]) -> MediaItem:
    kind = part["type"]
    value = part.get(kind)
    url = value.get("url") if isinstance(value, Mapping) and kind != "input_audio" else None
    url = url if isinstance(url, str) else ""
    identity = url.encode() if url else repr(sorted(value.items()) if isinstance(value, Mapping) else value).encode()
    digest = hashlib.shake_128(identity).digest(4 * MEDIA_ITEM_TOKENS)
    return MediaItem(part, url, tuple(array("I", digest)))


def media_items(messages: Any) -> list[MediaItem]:
    """The media parts of chat ``messages``, in order (none for anything malformed: parsing reports that)."""
    items = []
    for message in messages if isinstance(messages, list) else ():
        content = message.get("content") if isinstance(message, Mapping) else None
        for part in content if isinstance(content, list) else ():
            if isinstance(part, Mapping) and part.get("type") in MEDIA_TYPES:
                items.append(media_item(part))
    return items


@dataclass(slots=True)
class ParsedRequest:
    kind: str
    model: str
    prompt_token_ids: list[int]
    max_tokens: int
    stream: bool
    include_usage: bool
    cache_salt: str | None = None
    media: tuple[MediaItem, ...] = ()


def _positive_int(body: Mapping[str, Any], *names: str) -> int | None:
    for name in names:
        value = body.get(name)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise bad_request(f"{name} must be a positive integer")
        return value
    return None


def _token_ids(value: Any) -> list[int]:
    if not value or not all(isinstance(t, int) and not isinstance(t, bool) and 0 <= t <= 0xFFFFFFFF for t in value):
        raise bad_request("prompt token ids must be a non-empty list of integers in [0, 2^32)")
    return list(value)


def _completion_prompt(prompt: Any) -> list[int]:
    """A string, a list of token ids, or a one-element batch of either (vLLM accepts all four)."""
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], (str, list)):
        prompt = prompt[0]
    if isinstance(prompt, str):
        if not prompt:
            raise bad_request("prompt must not be empty")
        return tokenizer.encode(prompt)
    if isinstance(prompt, list):
        if prompt and isinstance(prompt[0], (str, list)):
            raise bad_request("batched prompts are not supported; send one prompt per request")
        return _token_ids(prompt)
    raise bad_request("prompt must be a string or a list of token ids")


def chat_prompt(messages: Any) -> list[int]:
    if not isinstance(messages, list) or not messages:
        raise bad_request("messages must be a non-empty list")
    try:
        return tokenizer.encode(tokenizer.render_chat(messages))
    except ValueError as exc:
        raise bad_request(str(exc)) from exc


def parse(kind: str, body: Any, default_max_tokens: int) -> ParsedRequest:
    """Validate a completions or chat body; raises ``RequestError`` (400) with vLLM-like messages."""
    if not isinstance(body, dict):
        raise bad_request("request body must be a JSON object")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise bad_request("model must be a non-empty string")
    media: tuple[MediaItem, ...] = ()
    if kind == CHAT:
        ids = chat_prompt(body.get("messages"))
        media = tuple(media_items(body.get("messages")))
        if media:
            ids = [t for item in media for t in item.tokens] + ids
        max_tokens = _positive_int(body, "max_completion_tokens", "max_tokens")
    else:
        if "prompt" not in body:
            raise bad_request("prompt is required")
        ids = _completion_prompt(body["prompt"])
        max_tokens = _positive_int(body, "max_tokens")
    stream = body.get("stream", False)
    options = body.get("stream_options") or {}
    if not isinstance(stream, bool) or not isinstance(options, dict):
        raise bad_request("stream must be a boolean and stream_options an object")
    include_usage = bool(options.get("include_usage", False))
    salt = body.get("cache_salt")
    if salt is not None and (not isinstance(salt, str) or not salt):
        raise bad_request("cache_salt must be a non-empty string")
    return ParsedRequest(kind, model, ids, max_tokens or default_max_tokens, stream, stream and include_usage, salt, media)


def usage(prompt_tokens: int, completion_tokens: int, cached_tokens: int, details: bool) -> dict[str, Any]:
    """vLLM 0.32's usage object: ``prompt_tokens_details`` is null unless the engine runs with
    ``--enable-prompt-tokens-details`` (``details``)."""
    return {
        "prompt_tokens": prompt_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
        "completion_tokens": completion_tokens,
        "prompt_tokens_details": (
            {"cached_tokens": max(cached_tokens, 0), "created_cache_tokens": None, "multimodal_tokens": None}
            if details else None
        ),
        "completion_tokens_details": None,
    }


def response_body(kind: str, rid: str, created: int, model: str, text: str, usage_: dict[str, Any]) -> dict[str, Any]:
    """The non-streaming response; the simulated model always stops on length."""
    if kind == CHAT:
        choice: dict[str, Any] = {
            "index": 0,
            "message": {"role": "assistant", "content": text, "tool_calls": []},
            "logprobs": None,
            "finish_reason": "length",
            "stop_reason": None,
        }
        obj = "chat.completion"
    else:
        choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": "length", "stop_reason": None}
        obj = "text_completion"
    return {"id": rid, "object": obj, "created": created, "model": model, "choices": [choice], "usage": usage_}


def stream_chunk(
    kind: str, rid: str, created: int, model: str, text: str, finish_reason: str | None, *, role: bool = False
) -> dict[str, Any]:
    """One SSE ``data:`` object. Chat chunks carry a ``delta`` (the first one the role)."""
    if kind == CHAT:
        delta: dict[str, Any] = {"role": "assistant", "content": text} if role else {"content": text}
        choice: dict[str, Any] = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
        obj = "chat.completion.chunk"
    else:
        choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": finish_reason}
        obj = "text_completion"
    if finish_reason is not None:
        choice["stop_reason"] = None
    return {"id": rid, "object": obj, "created": created, "model": model, "choices": [choice]}


def usage_chunk(kind: str, rid: str, created: int, model: str, usage_: dict[str, Any]) -> dict[str, Any]:
    """The final ``stream_options.include_usage`` chunk: no choices, just usage."""
    obj = "chat.completion.chunk" if kind == CHAT else "text_completion"
    return {"id": rid, "object": obj, "created": created, "model": model, "choices": [], "usage": usage_}
