"""Synthetic workloads: deterministic by seed, with the sharing structure they promise."""

from __future__ import annotations

from itertools import pairwise

import pytest

from epp.replay.bounds import chains, ideal_hit_ratio
from epp.replay.synthetic import MultiTurnParams, SharedPrefixParams, multi_turn, shared_prefix


def test_shared_prefix_ideal_hit_is_the_shared_fraction() -> None:
    p = SharedPrefixParams(groups=4, prompts_per_group=5, system_len=64, question_len=16, output_len=8, rate=10)
    trace = shared_prefix(p, seed=1)
    assert len(trace.requests) == 20
    # every group's first request misses; the other 4 hit the 64-token system prompt
    expected = 4 * 4 * 64 / (20 * 80)
    assert ideal_hit_ratio(chains(trace.requests, 16)) == pytest.approx(expected)


def test_multi_turn_prompts_extend_the_previous_turn() -> None:
    p = MultiTurnParams(conversations=3, turns=4, system_len=32, user_len=8, output_len=4, rate=1, think_time=5)
    trace = multi_turn(p, seed=2)
    assert len(trace.requests) == 12
    arrivals = [r.arrival for r in trace.requests]
    assert arrivals == sorted(arrivals)
    by_conv: dict[str | None, list[list[int]]] = {}
    for r in trace.requests:
        by_conv.setdefault(r.session, []).append(r.prompt.tokens())
    for turns in by_conv.values():
        assert [len(t) for t in turns] == [40, 52, 64, 76]
        for prev, cur in pairwise(turns):
            assert cur[: len(prev)] == prev
    firsts = [turns[0][:32] for turns in by_conv.values()]
    assert all(f == firsts[0] for f in firsts)  # one system prompt for everyone


def test_deterministic_by_seed() -> None:
    p = SharedPrefixParams(groups=3, prompts_per_group=3, system_len=16, question_len=4, output_len=2, rate=5)
    assert shared_prefix(p, 7).requests == shared_prefix(p, 7).requests
    assert shared_prefix(p, 7).requests != shared_prefix(p, 8).requests


def test_rejects_non_positive_parameters() -> None:
    with pytest.raises(ValueError, match="groups"):
        shared_prefix(SharedPrefixParams(groups=0), 0)
