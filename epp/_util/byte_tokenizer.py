"""A stand-in tokenizer: fast, deterministic and exactly reversible, so ``/detokenize`` works.

It is the simulator's tokenizer (``epp sim``), and the picker's ``sim`` tokenizer that matches it, so it
lives below both: the engine may import only ``epp._util``.

A token is 4 bytes of the UTF-8 text read as a little-endian uint32 (≈4 characters per token, the
same estimate GIE uses for prompt length). The tail is padded with NUL bytes, which ``decode`` drops:
equal text prefixes give equal token prefixes (up to the last full 4-byte group), which is what
prefix caching needs. Any uint32 is a valid id; ids that do not form valid UTF-8 decode with U+FFFD.

Chat requests go through ``render_chat`` first, a deliberately simple template::

    <|system|>\\nYou are helpful.\\n<|user|>\\nHi\\n<|assistant|>\\n
"""

from __future__ import annotations

import sys
from array import array
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

_MAX_ID = 0xFFFFFFFF


def _u32(values: Iterable[int] | bytes) -> array[int]:
    out = array("I")
    if out.itemsize != 4:  # pragma: no cover - every mainstream platform has a 4-byte unsigned int
        raise RuntimeError("array('I') is not 4 bytes on this platform")
    if isinstance(values, bytes):
        out.frombytes(values)
    else:
        out.extend(values)
    return out


def encode(text: str) -> list[int]:
    data = text.encode("utf-8", errors="replace")  # a lone surrogate (not valid UTF-8) becomes "?"
    data += b"\0" * (-len(data) % 4)
    ids = _u32(data)
    if sys.byteorder == "big":  # pragma: no cover
        ids.byteswap()
    return ids.tolist()


def decode(token_ids: Sequence[int]) -> str:
    """The text of ``token_ids``; raises ``ValueError`` for ids outside uint32."""
    try:
        ids = _u32(token_ids)
    except OverflowError as exc:
        raise ValueError(f"token ids must be in [0, {_MAX_ID}]") from exc
    if sys.byteorder == "big":  # pragma: no cover
        ids.byteswap()
    return ids.tobytes().replace(b"\0", b"").decode("utf-8", errors="replace")


def render_chat(messages: Sequence[Mapping[str, Any]]) -> str:
    """Render OpenAI chat messages with the template above; content may be a string or a list of
    ``{"type": "text", "text": ...}`` parts. Raises ``ValueError`` on malformed messages."""
    parts: list[str] = []
    for message in messages:
        if not isinstance(message, Mapping) or not isinstance(message.get("role"), str):
            raise ValueError("each message needs a string 'role'")
        content = message.get("content")
        if content is None:
            text = ""
        elif isinstance(content, str):
            text = content
        elif isinstance(content, list):
            text = "".join(p.get("text", "") for p in content if isinstance(p, Mapping) and p.get("type") == "text")
        else:
            raise ValueError("message 'content' must be a string or a list of parts")
        parts.append(f"<|{message['role']}|>\n{text}\n")
    parts.append("<|assistant|>\n")
    return "".join(parts)

