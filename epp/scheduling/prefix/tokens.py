"""A request's prompt as the engine's token ids, so the picker hashes the blocks an engine caches.

The precise prefix index is keyed by chained hashes of token-id blocks (what engines report in
``BlockStored.token_ids``). The request side must produce the same token ids the engine will: token
ids the request carries are used as they are; text is tokenized by a pluggable ``Tokenizer``.

The default (``sim``) is the simulator's stand-in tokenizer and chat template
(``epp.engine.tokenizer``), which matches ``epp sim`` exactly. **With a real vLLM or SGLang engine a
tokenizer matching the served model (and its chat template) must be configured** (``tokenizer:
"package.module:factory"``); with a mismatched tokenizer the hashes never match, every endpoint
shows zero precise hits, and scoring falls back to load alone.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Mapping, Sequence
from typing import Any, Protocol, cast

from epp._util.hashing import ChainMemo, chain_bytes, token_bytes
from epp.engine import tokenizer as sim_tokenizer
from epp.request import LLMRequest, RequestKind
from epp.scheduling.prefix.hashing import request_seed

SIM_TOKENIZER = "sim"


class Tokenizer(Protocol):
    """What the request side needs from a tokenizer: text → ids, chat messages → prompt text."""

    def encode(self, text: str) -> list[int]: ...

    def render_chat(self, messages: Sequence[Mapping[str, Any]]) -> str: ...


class _SimTokenizer:
    """``epp.engine.tokenizer`` behind the protocol (so it can be swapped like any other)."""

    def encode(self, text: str) -> list[int]:
        return sim_tokenizer.encode(text)

    def render_chat(self, messages: Sequence[Mapping[str, Any]]) -> str:
        return sim_tokenizer.render_chat(messages)


def load_tokenizer(spec: str) -> Tokenizer:
    """``sim``, or ``package.module:factory`` naming a zero-argument callable returning a
    ``Tokenizer`` (e.g. a wrapper around a Hugging Face tokenizer loaded from local files).
    Raises ``ValueError`` with the reason when the spec cannot be loaded."""
    if spec == SIM_TOKENIZER:
        return _SimTokenizer()
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise ValueError(f"must be {SIM_TOKENIZER!r} or 'package.module:factory', got {spec!r}")
    try:
        factory = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as err:
        raise ValueError(f"cannot load tokenizer {spec!r}: {err}") from None
    made = factory()
    if not callable(getattr(made, "encode", None)) or not callable(getattr(made, "render_chat", None)):
        raise ValueError(f"tokenizer {spec!r} must provide encode(text) and render_chat(messages)")
    return cast(Tokenizer, made)


def _prompt(request: LLMRequest, tokenizer: Tokenizer) -> str | list[int]:
    """The prompt as the engine will see it: text still to tokenize, or token ids."""
    if request.prompt_token_ids is not None:
        return request.prompt_token_ids
    body = request.body or {}
    try:
        if request.kind is RequestKind.CHAT_COMPLETIONS and isinstance(body.get("messages"), list):
            return tokenizer.render_chat(body["messages"])
        prompt = body.get("prompt")
        if isinstance(prompt, list) and len(prompt) == 1:
            prompt = prompt[0]
        if isinstance(prompt, str):
            return prompt
        if isinstance(prompt, list) and all(isinstance(t, int) and not isinstance(t, bool) for t in prompt):
            return list(prompt)
    except ValueError:  # a malformed chat message: the engine will reject it too
        return []
    return request.prompt_bytes.decode("utf-8", errors="replace") if request.prompt_bytes else []


def prompt_token_ids(request: LLMRequest, tokenizer: Tokenizer) -> list[int]:
    """The token ids the engine will see for ``request``; [] when it has no usable prompt (then
    nothing matches, which is the honest answer)."""
    prompt = _prompt(request, tokenizer)
    return tokenizer.encode(prompt) if isinstance(prompt, str) else prompt


def engine_block_hashes(
    request: LLMRequest, tokenizer: Tokenizer, block_tokens: int, max_blocks: int, memo: ChainMemo | None = None
) -> list[int]:
    """Chained hashes of the prompt's full token blocks, seeded with the target model (a LoRA
    adapter's name when the request targets one) and ``cache_salt``, as ``PreciseIndex`` keys engine blocks (``memo``:
    segments hashed recently are not hashed again).

    With the ``sim`` tokenizer a text prompt's packed token blocks *are* its NUL-padded UTF-8 bytes
    (a token is 4 bytes read little-endian, packed back little-endian), so the bytes are hashed
    directly: as cheap as the approximate producer's byte blocks, without a list of ints."""
    prompt = _prompt(request, tokenizer)
    seed = request_seed(request)
    block_bytes = block_tokens * 4
    if isinstance(prompt, str) and isinstance(tokenizer, _SimTokenizer) and sys.byteorder == "little":
        data = prompt.encode("utf-8", errors="replace")
        data += b"\0" * (-len(data) % 4)
    else:
        tokens = tokenizer.encode(prompt) if isinstance(prompt, str) else prompt
        data = token_bytes(tokens[: block_tokens * max_blocks])
    return chain_bytes(data[: block_bytes * max_blocks], block_bytes, seed, memo)
