"""Mooncake FAST'25 JSONL: ``{"timestamp": ms, "input_length", "output_length", "hash_ids": [...]}``.

``hash_ids`` holds one chained prefix hash per 512-token block, the partial last block included, so
block id b becomes token ids ``range(b*512, b*512+512)`` (the last one cut to ``input_length``): equal
ids give equal tokens, and the engine's own chained hashing then reproduces the trace's sharing.
"""

from __future__ import annotations

from typing import Any

from epp.replay.traces.model import SegmentPrompt, TraceRequest
from epp.replay.traces.tokens import UNIQUE_BASE

BLOCK_TOKENS = 512
MAX_HASH_ID = UNIQUE_BASE // BLOCK_TOKENS  # keeps block tokens below the unique-content range


def looks_like(obj: dict[str, Any]) -> bool:
    return "hash_ids" in obj


def _count(obj: dict[str, Any], key: str, minimum: int) -> int:
    value = obj.get(key)
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ValueError(f"{key!r} must be an integer ≥ {minimum}, got {value!r}")
    return value


def parse(obj: dict[str, Any]) -> TraceRequest:
    """One line's request, its ``arrival`` still the raw timestamp in seconds; ValueError if malformed.

    An ``output_length`` of 0 is replayed as 1: an engine always produces at least one token.
    """
    ts = obj.get("timestamp")
    if not isinstance(ts, (int, float)) or isinstance(ts, bool) or ts < 0:
        raise ValueError(f"'timestamp' must be a non-negative number of milliseconds, got {ts!r}")
    length = _count(obj, "input_length", 1)
    output = _count(obj, "output_length", 0)
    ids = obj.get("hash_ids")
    if not isinstance(ids, list) or not all(
        isinstance(h, int) and not isinstance(h, bool) and 0 <= h < MAX_HASH_ID for h in ids
    ):
        raise ValueError(f"'hash_ids' must be a list of integers in [0, {MAX_HASH_ID})")
    needed = -(-length // BLOCK_TOKENS)
    if len(ids) != needed:
        raise ValueError(f"{len(ids)} hash_ids for input_length {length} (expected {needed} blocks of 512)")
    segments = [(h * BLOCK_TOKENS, BLOCK_TOKENS) for h in ids]
    segments[-1] = (ids[-1] * BLOCK_TOKENS, length - BLOCK_TOKENS * (needed - 1))
    return TraceRequest(ts / 1000.0, SegmentPrompt(tuple(segments)), max(1, output))
