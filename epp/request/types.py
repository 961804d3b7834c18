"""The parsed request every layer below the protocol adapter works with."""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


class RequestKind(enum.Enum):
    COMPLETIONS = "completions"
    CHAT_COMPLETIONS = "chat_completions"
    RESPONSES = "responses"
    EMBEDDINGS = "embeddings"
    MESSAGES = "messages"  # Anthropic /v1/messages (anthropic-parser)
    OTHER = "other"


@dataclass(slots=True)
class LLMRequest:
    """One inference request after parsing.

    ``prompt_bytes`` is what prefix-cache locality hashes: the completions prompt text, or the JSON of
    the chat messages, UTF-8 encoded; equal leading bytes mean an equal cached prefix on the engine.
    ``model`` is what the client asked for, ``target_model`` what epp routes to (after rewrites).
    ``prompt_token_ids`` is set only when the client (or a trace) supplies token ids.
    """

    request_id: str
    kind: RequestKind
    model: str
    path: str = "/v1/completions"
    target_model: str = ""
    prompt_bytes: bytes = b""
    prompt_token_ids: list[int] | None = None
    stream: bool = False
    max_tokens: int | None = None
    owned_by: str | None = None
    user: str | None = None
    priority: int = 0
    objective: str | None = None
    fairness_id: str = "default-flow"
    session_token: str | None = None
    headers: Mapping[str, str] = field(default_factory=dict)
    body: dict[str, Any] | None = None
    block_hashes: dict[tuple[object, ...], tuple[tuple[object, ...], list[int]]] = field(
        default_factory=dict, repr=False, compare=False
    )
    """The prompt's chained block hashes, computed once per request and shared by every producer and
    scorer that asks for the same ones (``epp.scheduling.prefix.hashing.hashed_once``): hashing a 220 KB
    prompt is 3,520 xxhash calls, ~1 ms. Keyed by what determines them, each entry kept with the
    objects it was computed from, so a prompt replaced since is hashed again."""

    def __post_init__(self) -> None:
        if not self.target_model:
            self.target_model = self.model

    @property
    def estimated_prompt_tokens(self) -> int:
        """Token count for load accounting: exact for token ids, else ~4 bytes per token (GIE's estimate)."""
        if self.prompt_token_ids is not None:
            return len(self.prompt_token_ids)
        return (len(self.prompt_bytes) + 3) // 4
