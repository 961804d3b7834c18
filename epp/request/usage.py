"""Token usage reported by the engine: from a JSON response, or from an SSE stream read piece by piece.

Fields are merged per field across events, as the reference does, because some engines report prompt
and completion counts in different chunks. Chat/completions name them ``prompt_tokens`` /
``completion_tokens`` (+ ``prompt_tokens_details.cached_tokens``); the Responses API names them
``input_tokens`` / ``output_tokens`` (+ ``input_tokens_details.cached_tokens``) inside
``response.usage`` of its ``response.completed`` event. Anthropic's Messages API (``anthropic-parser``)
uses ``input_tokens`` / ``output_tokens`` (+ ``cache_read_input_tokens``), streamed in ``message_start``'s
``message.usage`` and ``message_delta``'s ``usage``, as upstream's anthropic parser reads them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson
from google.protobuf.message import DecodeError

# An SSE line longer than this is not a usage event; skipping it bounds memory on hostile streams.
MAX_SSE_LINE_BYTES = 1024 * 1024


@dataclass(slots=True)
class Usage:
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    cached_tokens: int | None = None

    @property
    def known(self) -> bool:
        return self.prompt_tokens is not None or self.completion_tokens is not None

    def as_dict(self) -> dict[str, int]:
        """The counts that were reported, keyed as scheduler ``response_complete`` plugins expect."""
        out = {}
        if self.prompt_tokens is not None:
            out["prompt_tokens"] = self.prompt_tokens
        if self.completion_tokens is not None:
            out["completion_tokens"] = self.completion_tokens
        if self.cached_tokens is not None:
            out["cached_tokens"] = self.cached_tokens
        return out

    def merge(self, data: object) -> None:
        """Take every count present in one ``usage`` object; absent fields keep earlier values."""
        if not isinstance(data, dict):
            return
        prompt = _count(data, "prompt_tokens", "input_tokens")
        completion = _count(data, "completion_tokens", "output_tokens")
        details = data.get("prompt_tokens_details") or data.get("input_tokens_details")
        cached = _count(details, "cached_tokens") if isinstance(details, dict) else _count(data, "cache_read_input_tokens")
        if prompt is not None:
            self.prompt_tokens = prompt
        if completion is not None:
            self.completion_tokens = completion
        if cached is not None:
            self.cached_tokens = cached


def usage_from_json(body: bytes) -> Usage:
    """Usage of a non-streaming response; empty when the body is not JSON or has no usage."""
    usage = Usage()
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        return usage
    if isinstance(data, dict):
        _merge_event(usage, data)
    return usage


class SSEUsageReader:
    """Feeds on raw SSE bytes as they arrive; keeps only the unfinished last line between chunks.

    Only ``data:`` lines mentioning ``"usage"`` are decoded, so token events cost a substring search.
    """

    __slots__ = ("usage", "_partial", "_skipping")

    def __init__(self) -> None:
        self.usage = Usage()
        self._partial = b""
        self._skipping = False

    def feed(self, chunk: bytes) -> None:
        data = self._partial + chunk if self._partial else chunk
        lines = data.split(b"\n")
        self._partial = lines.pop()
        for line in lines:
            if self._skipping:
                self._skipping = False
                continue
            self._line(line)
        if len(self._partial) > MAX_SSE_LINE_BYTES:
            self._partial = b""
            self._skipping = True

    @property
    def pending_bytes(self) -> int:
        """The unfinished line held between chunks (at most ``MAX_SSE_LINE_BYTES`` plus one chunk)."""
        return len(self._partial)

    def close(self) -> None:
        """End of stream: a last line without a newline still counts."""
        if self._partial and not self._skipping:
            self._line(self._partial)
        self._partial = b""

    def _line(self, line: bytes) -> None:
        if not line.startswith(b"data:") or b'"usage"' not in line:
            return
        payload = line[5:].strip()
        try:
            event = orjson.loads(payload)
        except orjson.JSONDecodeError:
            return
        if isinstance(event, dict):
            _merge_event(self.usage, event)


class GrpcUsageReader:
    """Usage of a gRPC response stream (vLLM's ``VllmEngine/Generate`` and ``/Embed``): length-prefixed
    protobuf frames read as they arrive, counts taken from each ``GenerateStreamChunk`` /
    ``GenerateComplete`` / ``EmbedResponse`` that reports any (as upstream's vllmgrpc parser does). A frame
    longer than ``MAX_SSE_LINE_BYTES`` is skipped unread, so memory stays bounded; compressed frames too."""

    __slots__ = ("usage", "_buffer", "_skip")

    def __init__(self) -> None:
        self.usage = Usage()
        self._buffer = b""
        self._skip = 0  # bytes of an oversized or compressed frame still to pass over

    def feed(self, chunk: bytes) -> None:
        if self._skip:
            taken = min(self._skip, len(chunk))
            self._skip -= taken
            chunk = chunk[taken:]
        data = self._buffer + chunk if self._buffer else chunk
        pos = 0
        while len(data) - pos >= 5:
            compressed, length = data[pos], int.from_bytes(data[pos + 1:pos + 5], "big")
            if compressed or length > MAX_SSE_LINE_BYTES:
                available = len(data) - pos - 5
                self._skip = max(0, length - available)
                pos = min(len(data), pos + 5 + length)
                continue
            if len(data) - pos - 5 < length:
                break
            self._message(data[pos + 5:pos + 5 + length])
            pos += 5 + length
        self._buffer = data[pos:]

    @property
    def pending_bytes(self) -> int:
        return len(self._buffer)

    def close(self) -> None:
        self._buffer = b""

    def _message(self, payload: bytes) -> None:
        from epp.request import protos  # protobuf descriptors: only loaded once a gRPC response is seen

        try:
            reply: Any = protos.GenerateResponse.FromString(payload)
            which = reply.WhichOneof("response")
            counts: Any = getattr(reply, which) if which else protos.EmbedResponse.FromString(payload)
        except DecodeError:
            return
        prompt = counts.prompt_tokens
        completion = getattr(counts, "completion_tokens", 0)
        if prompt or completion:
            self.usage.merge({"prompt_tokens": prompt, "completion_tokens": completion,
                              "prompt_tokens_details": {"cached_tokens": getattr(counts, "cached_tokens", 0)}})


def _merge_event(usage: Usage, event: dict[str, Any]) -> None:
    if event.get("type") == "response.completed" or "usage" not in event:
        for wrapper in ("response", "message"):  # Responses API; Anthropic's message_start
            inner = event.get(wrapper)
            if isinstance(inner, dict):
                usage.merge(inner.get("usage"))
                return
    usage.merge(event.get("usage"))


def _count(data: dict[str, Any], *names: str) -> int | None:
    for name in names:
        value = data.get(name)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    return None
