"""What every simulated engine generates: a fixed text, cycling, so equal prompts get equal outputs."""

from __future__ import annotations

from epp._util.byte_tokenizer import encode

FILLER_TEXT = "lorem ipsum dolor sit amet consectetur adipiscing elit sed do eiusmod tempor ut "
"""What every engine generates, cycling: 80 characters, so exactly 20 tokens."""
FILLER_TOKEN_IDS: tuple[int, ...] = tuple(encode(FILLER_TEXT))
