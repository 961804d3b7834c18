"""``epp replay --replicas N --shared-state``: the replicas' ledgers meet in virtual time."""

from __future__ import annotations

import json

import pytest

from epp._util.clock import VirtualClock
from epp.cli import main
from epp.replay.offline import ClusterSpec, OfflineReplay
from epp.replay.policies import resolve
from epp.replay.replicas import Replicas
from epp.replay.traces import SegmentPrompt, TraceRequest
from epp.scheduling.plugins.scorers.ttft_predictor import TTFTPredictorScorer


def long_prompts(n: int, gap: float) -> list[TraceRequest]:
    """Unrelated 6K-token prompts arriving every ``gap`` s: prefill work queues on the engines."""
    return [TraceRequest(i * gap, SegmentPrompt(((5_000_000 + i * 8192, 6000),)), 16) for i in range(n)]


def run(replicas: Replicas) -> tuple[OfflineReplay, list[int]]:
    """The run, and per pick the requests the other replicas had in flight on the chosen engine as the
    picking replica saw them (its ledger's ``remote``)."""
    clock = VirtualClock()
    schedulers, _ = replicas.build(resolve("default"), clock, 0)
    driver = OfflineReplay(long_prompts(40, 0.01), schedulers, ClusterSpec(engines=2), clock,
                           exchange=replicas.exchange(schedulers, clock))  # fmt: skip
    seen: list[int] = []
    for scheduler in schedulers:
        scorer = next(p for p in scheduler.plugins if isinstance(p, TTFTPredictorScorer))
        booked = scorer.pre_request

        def spy(cycle, request, result, scorer=scorer, booked=booked):  # type: ignore[no-untyped-def]
            ledger = scorer.ledgers.get(result.endpoints[0].name)
            seen.append(ledger.remote.requests if ledger is not None else 0)
            booked(cycle, request, result)

        scorer.pre_request = spy  # type: ignore[method-assign]
    driver.run()
    return driver, seen


def test_replicas_see_each_others_requests_only_with_shared_state() -> None:
    _, alone = run(Replicas(2))
    shared, seen = run(Replicas(2, shared_state=True, share_period=0.025))
    assert not any(alone)
    assert sum(seen) > 0  # picks saw the other replica's work
    exchange = shared.exchange
    assert exchange is not None and exchange.ticks >= 10
    again, seen_again = run(Replicas(2, shared_state=True, share_period=0.025))
    assert seen_again == seen  # deterministic
    assert [r.engine for r in again.records] == [r.engine for r in shared.records]


def test_replay_cli_takes_shared_state(capsys: pytest.CaptureFixture[str]) -> None:
    args = ["replay", "--synthetic", "shared-prefix", "--sp-groups", "2", "--sp-prompts-per-group", "3",
            "--sp-system-len", "256", "--sp-question-len", "16", "--sp-output-len", "4", "--engines", "2",
            "--jobs", "1", "--policy", "default", "--json"]  # fmt: skip
    assert main([*args, "--replicas", "2", "--shared-state", "--shared-state-period", "10ms"]) == 0
    summary = json.loads(capsys.readouterr().out)[0]
    assert summary["replicas"] == 2 and summary["prefix_view"] == "shared+state"
    assert main([*args, "--shared-state"]) == 2
    assert "--shared-state needs --replicas 2 or more" in capsys.readouterr().err


def test_bad_periods_are_refused() -> None:
    with pytest.raises(ValueError, match="--shared-state-period"):
        Replicas(2, shared_state=True, share_period=0)
