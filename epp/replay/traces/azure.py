"""Azure LLM inference trace CSV (2023/2024): ``TIMESTAMP,ContextTokens,GeneratedTokens``.

Arrivals and lengths only: every prompt gets fresh token ids, so nothing is shared and any cache hit
a policy reports on it is a bug.
"""

from __future__ import annotations

from datetime import UTC, datetime

from epp.replay.traces.model import SegmentPrompt, TraceRequest
from epp.replay.traces.tokens import TokenSpace

HEADER = ("TIMESTAMP", "ContextTokens", "GeneratedTokens")


def looks_like(first_line: str) -> bool:
    return first_line.strip().lstrip("\ufeff").split(",")[:1] == [HEADER[0]]


def _timestamp(value: str) -> float:
    """'2023-11-16 18:17:03.9799600' (7 fractional digits, more than strptime takes) → epoch seconds."""
    head, _, frac = value.strip().partition(".")
    base = datetime.strptime(head, "%Y-%m-%d %H:%M:%S").replace(tzinfo=UTC).timestamp()
    if frac and not frac.isdigit():
        raise ValueError(f"bad fractional seconds in {value!r}")
    return base + (int(frac) / 10 ** len(frac) if frac else 0.0)


def parse(line: str, space: TokenSpace) -> TraceRequest:
    """One data row (``arrival`` = absolute epoch seconds); ValueError if malformed."""
    cols = line.strip().split(",")
    if len(cols) != 3:
        raise ValueError(f"expected 3 columns {','.join(HEADER)}, got {len(cols)}")
    context, generated = int(cols[1]), int(cols[2])
    if context < 1 or generated < 0:
        raise ValueError(f"token counts out of range: {context}, {generated}")
    return TraceRequest(_timestamp(cols[0]), SegmentPrompt((space.take(context),)), max(1, generated))
