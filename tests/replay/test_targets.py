"""Issue #10's targets judged on hand-made summaries whose verdicts are known."""

from __future__ import annotations

from typing import Any

import pytest

from epp.replay.targets import Loads, Verdict, evaluate, versus

KNEE = 2.8
UNLOADED = 0.01


def summary(policy: str, rate: float, p90: float, hit: float = 0.16, capacity: float = 0.16, **extra: Any) -> dict[str, Any]:
    base = {
        "policy": policy, "rate_scale": rate, "requests": 100, "completed": 100, "shed": 0, "shed_too_long": 0,
        "hit_ratio": hit, "ideal_hit_ratio": 0.3, "capacity_hit_ratio": capacity, "ttft_p90": p90, "imbalance": 1.1,
        "busy_imbalance": 1.05,
    }  # fmt: skip
    return base | extra


def passing(capacity: float = 0.16) -> list[dict[str, Any]]:
    """default beats every target: 0.5× gie at the knee, 0.1× round-robin, hits at the bound."""
    hit = capacity
    return [
        summary("default", UNLOADED, 0.9, hit, capacity),
        summary("gie-default", UNLOADED, 0.9, hit, capacity),
        summary("default", 1.0, 1.0, hit, capacity),
        summary("gie-default", 1.0, 1.2, hit, capacity),
        summary("round-robin", 1.0, 1.5, hit, capacity),
        summary("default", KNEE, 1.1, hit, capacity),
        summary("gie-default", KNEE, 2.2, hit, capacity),
        summary("round-robin", KNEE, 11.0, hit / 2, capacity),
    ]


def by_target(verdicts: list[Verdict]) -> dict[tuple[str, str], Verdict]:
    return {(v.target, v.at): v for v in verdicts}


def replace(runs: list[dict[str, Any]], policy: str, rate: float, **changes: Any) -> list[dict[str, Any]]:
    return [r | changes if (r["policy"], r["rate_scale"]) == (policy, rate) else r for r in runs]


def test_every_target_met_when_default_beats_them_all() -> None:
    verdicts = evaluate(passing(), Loads(KNEE, UNLOADED))
    assert len(verdicts) == 10 and all(v.met is True for v in verdicts), verdicts
    worst = by_target(verdicts)[("TTFT p90 ÷ gie-default, worst rate", "unloaded (worst of 3 rates)")]
    assert worst.value == pytest.approx(1.0)


def test_a_missed_hit_target_names_the_bounds_and_the_best_policy() -> None:
    runs = replace(passing(), "default", KNEE, hit_ratio=0.14)
    runs = replace(runs, "gie-default", KNEE, hit_ratio=0.158)
    v = by_target(evaluate(runs, Loads(KNEE, UNLOADED)))[("hit ÷ capacity bound", "knee ×2.8")]
    assert v.met is False and v.value == pytest.approx(0.14 / 0.16)
    assert "capacity bound 16.0%" in v.why and "gie-default 15.8% (0.99)" in v.why


def test_without_prefix_information_the_hit_target_is_vacuous_not_met() -> None:
    verdicts = evaluate(passing(capacity=0.0), Loads(KNEE, UNLOADED))
    hits = [v for v in verdicts if v.target == "hit ÷ capacity bound"]
    assert len(hits) == 2 and all(v.met is None and "vacuous" in v.why for v in hits)
    assert all(v.met is True for v in verdicts if v not in hits)


def test_p90_misses_show_the_unloaded_floor() -> None:
    runs = replace(passing(), "default", KNEE, ttft_p90=1.6)  # 0.73 × gie-default
    v = by_target(evaluate(runs, Loads(KNEE, UNLOADED)))[("TTFT p90 ÷ gie-default", "knee ×2.8")]
    assert v.met is False and v.value == pytest.approx(1.6 / 2.2)
    assert "limit 1.540 s" in v.why and "unloaded (no queueing) p90 0.900 s = 0.41 × gie-default" in v.why


def test_worse_than_the_baseline_by_more_than_5_percent_at_any_rate_is_a_miss() -> None:
    runs = passing() + [summary("default", 4.0, 30.0), summary("gie-default", 4.0, 28.0)]  # 1.07× past the knee
    v = [v for v in evaluate(runs, Loads(KNEE, UNLOADED)) if v.target.endswith("worst rate")][0]
    assert v.met is False and v.at == "×4 (worst of 4 rates)" and v.value == pytest.approx(30 / 28)


def test_engine_refusals_are_not_scheduler_sheds() -> None:
    runs = replace(passing(), "default", 1.0, shed=3, shed_too_long=3)
    shed = evaluate(runs, Loads(KNEE, UNLOADED))[-1]
    assert shed.met is True and shed.value == 0 and "3 request(s) per run refused by the engine" in shed.why
    shed = evaluate(replace(runs, "default", KNEE, shed=1), Loads(KNEE, UNLOADED))[-1]
    assert shed.met is False and shed.value == 1


def test_imbalance_and_round_robin_limits() -> None:
    runs = replace(passing(), "default", 1.0, imbalance=1.6)
    runs = replace(runs, "round-robin", KNEE, ttft_p90=5.0)  # default 1.1 s = 0.22 × round-robin
    verdicts = by_target(evaluate(runs, Loads(KNEE, UNLOADED)))
    assert verdicts[("imbalance (max ÷ mean per engine)", "×1")].met is False
    assert verdicts[("imbalance (max ÷ mean per engine)", "knee ×2.8")].met is True
    assert verdicts[("TTFT p90 ÷ round-robin", "knee ×2.8")].met is False


def test_without_a_knee_the_knee_targets_are_not_judged() -> None:
    verdicts = evaluate([r for r in passing() if r["rate_scale"] != KNEE], Loads(None, UNLOADED))
    at_knee = [v for v in verdicts if v.at == "no knee"]
    assert len(at_knee) == 5 and all(v.met is None for v in at_knee)


def test_against_llm_d_the_knee_and_every_rate_up_to_it_count_but_not_past_it() -> None:
    runs = [
        summary("default", 1.0, 1.0), summary("llm-d-default", 1.0, 1.0),  # equal: 1.0 ≤ 1.05
        summary("default", KNEE, 1.6), summary("llm-d-default", KNEE, 2.0),  # 0.8 ≤ 0.85
        summary("default", KNEE * 1.2, 9.0), summary("llm-d-default", KNEE * 1.2, 3.0),  # past the knee: ignored
    ]
    at_knee, worst = versus(runs, Loads(KNEE, UNLOADED), "default", "llm-d-default")
    assert (at_knee.value, at_knee.met) == (pytest.approx(0.8), True)
    assert (worst.value, worst.met) == (pytest.approx(1.0), True) and worst.target.endswith("up to the knee")
    at_knee, worst = versus(replace(runs, "default", 1.0, ttft_p90=1.1), Loads(KNEE, UNLOADED), "default", "llm-d-default")
    assert worst.met is False and "1.100 s vs llm-d-default 1.000 s" in worst.why


BUSY = "busy-time imbalance (max ÷ mean busy s per engine)"
COUNT = "imbalance (max ÷ mean per engine)"


def test_busy_time_imbalance_is_a_verdict_of_its_own_beside_the_request_count() -> None:
    # a mix: the fast engines took 2.2× the mean requests, yet every engine was about as busy
    runs = replace(passing(), "default", KNEE, imbalance=2.2, busy_imbalance=1.1)
    verdicts = by_target(evaluate(runs, Loads(KNEE, UNLOADED)))
    assert verdicts[(COUNT, "knee ×2.8")].met is False
    assert (verdicts[(BUSY, "knee ×2.8")].value, verdicts[(BUSY, "knee ×2.8")].met) == (1.1, True)
    # and the other way round: equal request counts, one engine busy twice the mean
    runs = replace(passing(), "default", 1.0, imbalance=1.0, busy_imbalance=2.0)
    verdicts = by_target(evaluate(runs, Loads(KNEE, UNLOADED)))
    assert verdicts[(COUNT, "×1")].met is True and verdicts[(BUSY, "×1")].met is False


def test_busy_time_imbalance_is_not_judged_where_it_was_not_measured() -> None:
    runs = replace(passing(), "default", 1.0, busy_imbalance=None)  # live replay
    runs = [{k: v for k, v in r.items() if k != "busy_imbalance"} if r["rate_scale"] == KNEE else r for r in runs]
    verdicts = by_target(evaluate(runs, Loads(KNEE, UNLOADED)))
    for at in ("×1", "knee ×2.8"):
        assert verdicts[(BUSY, at)].met is None and "not measured" in verdicts[(BUSY, at)].why
