"""The busy-time imbalance column: each engine's stepping seconds as the replay measures them, and why
it differs from the request count on a pool of unequal engines."""

from __future__ import annotations

import pytest

from epp._util.clock import VirtualClock
from epp.replay.offline import ClusterSpec, OfflineReplay
from epp.replay.policies import resolve
from epp.replay.summary import busy_imbalance, imbalance, summarize
from epp.replay.traces import SegmentPrompt, TraceRequest

MIX = ("llama-3.1-8b-h100", "llama-3.2-1b-h100")


def _replay(trace: list[TraceRequest], policy: str, cluster: ClusterSpec) -> OfflineReplay:
    clock = VirtualClock()
    return OfflineReplay(trace, [resolve(policy).build(clock, 0)], cluster, clock)


def _trace(n: int, gap: float, length: int = 2048, output: int = 8) -> list[TraceRequest]:
    return [TraceRequest(i * gap, SegmentPrompt(((1_000_000 + i * length, length),)), output) for i in range(n)]


def test_one_request_at_a_time_the_engine_is_busy_from_arrival_to_finish() -> None:
    # nothing queues: each request's engine steps back to back from its arrival to its last token
    run = _replay(_trace(10, gap=5.0), "round-robin", ClusterSpec(engines=1)).run()
    assert all(r.finish is not None for r in run.records)
    assert run.busy[0] == pytest.approx(sum(r.finish - r.arrival for r in run.records if r.finish is not None),
                                        rel=1e-9)


def test_equal_request_counts_on_unequal_engines_are_unequal_work() -> None:
    # round-robin: each engine takes the same requests, but the 8B one works ~5× as long as the 1B one
    run = _replay(_trace(20, gap=2.0), "round-robin", ClusterSpec(engines=2, profiles=MIX)).run()
    assert run.dispatched == (10, 10) and imbalance(run.dispatched) == 1.0
    slow, fast = run.busy
    assert slow > 3 * fast > 0
    assert busy_imbalance(run.busy) == pytest.approx(2 * slow / (slow + fast))
    summary = summarize(run, "round-robin", 1.0, 0.0, 0.0)
    assert summary["imbalance"] == 1.0 and summary["busy_imbalance"] == pytest.approx(busy_imbalance(run.busy))


def test_not_measured_or_nothing_run_is_none_not_a_number() -> None:
    assert busy_imbalance(()) is None  # live replay: the engines' busy time is not seen
    assert busy_imbalance((0.0, 0.0)) is None
    assert busy_imbalance((1.0, 1.0, 1.0, 1.0)) == 1.0
    assert busy_imbalance((3.0, 1.0)) == 1.5
