"""Ideal and capacity hit ratios, checked against hand counts and the trace README."""

from __future__ import annotations

from pathlib import Path

import pytest

from epp.replay.bounds import capacity_hit_ratio, chains, ideal_hit_ratio
from epp.replay.traces import SegmentPrompt, TraceRequest, read_trace

B = 4  # tokens per block in the hand-counted examples


def req(*blocks: int, tail: int = B) -> TraceRequest:
    """A prompt of hash-id style blocks; the last one ``tail`` tokens long."""
    segs = [(b * B, B) for b in blocks]
    segs[-1] = (blocks[-1] * B, tail)
    return TraceRequest(0.0, SegmentPrompt(tuple(segs)), 1)


def test_ideal_matches_a_hand_count() -> None:
    trace = [
        req(1, 2, 3),  # 12 tokens, nothing seen: 0 hit
        req(1, 2, 4),  # 8 hit
        req(1, 5, 3),  # 4 hit: the chain diverges at block 2, so block "3" there is new content
        req(1, 2, 3, tail=2),  # 8 hit: the partial tail is different content from the full block 3
    ]
    assert ideal_hit_ratio(chains(trace, B)) == pytest.approx((0 + 8 + 4 + 8) / (12 + 12 + 12 + 10))


def test_all_unique_trace_has_no_hits() -> None:
    trace = [req(i, i + 100) for i in range(10)]
    assert ideal_hit_ratio(chains(trace, B)) == 0
    assert capacity_hit_ratio(chains(trace, B), 1000) == 0


def test_capacity_on_a_tiny_lru_by_hand() -> None:
    # capacity 3 blocks; touched tail-first so a prefix's head is most recent
    trace = [
        req(1, 2),  # miss; LRU (old→new): 2,1
        req(3, 4),  # miss; 2,1,4,3 → evict 2 → 1,4,3
        req(1, 2),  # hits block 1 only (4 tokens); 2 re-inserted: 4,3,2,1 → evict 4 → 3,2,1
        req(3, 4),  # hits 3 only; → 2,1,4,3 → evict 2 → 1,4,3
        req(1, 5),  # hits 1 (4 tokens)
    ]
    c = chains(trace, B)
    assert capacity_hit_ratio(c, 3) == pytest.approx(12 / 40)
    assert capacity_hit_ratio(c, 100) == ideal_hit_ratio(c) == pytest.approx(20 / 40)


DATA = Path(__file__).parent / "data"


def test_mooncake_excerpt_matches_the_independent_trace_stats_script() -> None:
    """The first 1,000 requests of the public Mooncake synthetic trace (tests/replay/data/README.md); the
    expected ratios are what the trace folder's stdlib ``trace_stats.py`` computes for the same lines."""
    trace = read_trace(DATA / "mooncake_fast25_synthetic_first1000.jsonl.gz")
    assert len(trace.requests) == 1000
    c = chains(trace.requests, 512)
    assert ideal_hit_ratio(c) == pytest.approx(0.17264979001073108, rel=1e-12)
    assert capacity_hit_ratio(c, 1000) == pytest.approx(0.010369860232722145, rel=1e-12)
    assert capacity_hit_ratio(c, 4000) == pytest.approx(0.04866322216876465, rel=1e-12)
