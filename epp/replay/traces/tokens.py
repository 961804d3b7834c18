"""Deterministic token ids for traces that carry no token ids.

Ranges are disjoint so content from different sources never collides into false sharing:
- hash-id blocks: id b ↦ ``[b·B, b·B + B)`` (B = the trace's block size, 512 for Mooncake), from 0;
- unique prompt content (Azure rows, synthetic questions): allocated upwards from ``UNIQUE_BASE``.
Text is tokenized by the engine's tokenizer and may land anywhere in uint32; a clash would need a whole
engine block of equal ids on an equal chain, which text never produces.
"""

from __future__ import annotations

UINT32_LIMIT = 1 << 32
UNIQUE_BASE = 1 << 31


class TokenSpace:
    """Hands out fresh runs of token ids, so every allocation is content no other request has."""

    __slots__ = ("_next",)

    def __init__(self, base: int = UNIQUE_BASE) -> None:
        self._next = base

    def take(self, n: int) -> tuple[int, int]:
        """A run ``(first_id, n)`` no earlier call returned."""
        start = self._next
        if start + n > UINT32_LIMIT:
            raise ValueError("trace too large: ran out of unique uint32 token ids")
        self._next = start + n
        return start, n

