"""Prefix recency: resident while held, then aged by the tokens written since release."""

from __future__ import annotations

import pytest

from epp.scheduling.ttft import PrefixRecency

CHAIN = list(range(100, 300))  # 200 block hashes of one conversation


def test_held_is_resident_and_release_starts_the_clock() -> None:
    r = PrefixRecency(stride=64)
    r.hold("turn1", CHAIN[:100], tokens_written=1600)
    assert r.written_since(CHAIN, 100) == 0
    r.hold("other", [9, 8, 7], tokens_written=500)
    assert r.written_since(CHAIN, 100) == 0  # still in flight: cannot be evicted
    r.release("turn1")
    r.hold("more", [5, 4], tokens_written=700)
    assert r.written_since(CHAIN, 100) == 700


@pytest.mark.parametrize(
    ("matched", "expected"),
    # marks at block 64 (the stride) and 100 (the last); a match of k blocks looks at block k, then at
    # the stride boundary below k
    [(100, 0), (64, 0), (80, 0), (120, 0), (63, None), (0, None), (201, None)],
)
def test_a_match_is_found_at_its_end_or_the_stride_boundary_below(matched: int, expected: int | None) -> None:
    r = PrefixRecency(stride=64)
    r.hold("t", CHAIN[:100], tokens_written=10)
    assert r.written_since(CHAIN, matched) == expected


def test_marks_are_capped_least_recently_released_first() -> None:
    r = PrefixRecency(stride=1, limit=3)
    r.hold("a", [1, 2], 0)
    r.release("a")
    r.hold("b", [3, 4], 0)
    r.release("b")
    assert len(r) == 3
    assert r.written_since([1], 1) is None and r.written_since([3, 4], 2) == 0


def test_releasing_an_unknown_request_is_harmless() -> None:
    r = PrefixRecency()
    r.release("never-held")
    assert r.written_since([1, 2, 3], 3) is None
