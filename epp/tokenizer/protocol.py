"""The tokenizer contract the request side depends on, apart from any implementation.

Scheduling's prefix producers hash the token ids an engine will cache; they need only these two
protocols. Implementations: ``epp.tokenizer.hf`` (a model folder's own), ``epp.tokenizer.load``'s
``sim`` stand-in (the simulator's), ``epp.tokenizer.source.ModelTokenizers`` (one per served model).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

from epp._util.offload import Split

__all__ = ["BackgroundLoading", "StreamingTokenizer", "TokenReader", "Tokenizer", "TokenizerSource"]


class Tokenizer(Protocol):
    """What the request side needs from a tokenizer: text → ids, chat messages → prompt text."""

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]: ...

    def render_chat(self, messages: Sequence[Mapping[str, Any]], options: Mapping[str, Any] | None = None) -> str:
        """The prompt text of ``messages``; ``options`` is the request body (``add_generation_prompt``,
        ``tools``, ``chat_template_kwargs`` …). Raises ``ValueError`` for what the engine rejects."""
        ...


class TokenReader(Protocol):
    """A text's token ids read front to back (``epp.tokenizer.hf.TokenStream``)."""

    done: bool

    def read(self, min_tokens: int) -> bytes:
        """At least ``min_tokens`` more ids as packed uint32 (fewer only at the end); b"" at the end."""
        ...

    def tokens_left(self) -> int:
        """About how many ids are still to read."""
        ...

    def read_all(self) -> bytes:
        """All the ids not read yet."""
        ...

    def rest(self, limit: int | None = None) -> Split[bytes]:
        """``read_all`` (or at least ``limit`` more ids, where fewer than all are needed) cut where its
        encoding may run on another thread (``epp._util.offload``)."""
        ...


class StreamingTokenizer(Tokenizer, Protocol):
    """A tokenizer that can encode a text front to back on demand, so a prompt's ids are computed
    only as far as the prefix index needs them."""

    def stream(self, text: str, add_special_tokens: bool = True) -> TokenReader: ...


class TokenizerSource(Protocol):
    """The tokenizer of each served model."""

    def for_model(self, model: str) -> Tokenizer | None:
        """``model``'s tokenizer; None while it is not available yet (then the request is matched
        approximately)."""
        ...


@runtime_checkable
class BackgroundLoading(Protocol):
    """A ``TokenizerSource`` that can move its loading off the pick path once serving starts (the
    data layer calls ``start_background`` at start; replay and tests keep loading inline, deterministic)."""

    def start_background(self) -> None: ...
