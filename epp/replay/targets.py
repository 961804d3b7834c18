"""The routing targets of issue #10, judged on one trace's replay summaries.

A policy (``default``) is held against a cache-aware baseline (``gie-default``) and a cache-blind one
(``round-robin``), at trace speed (×1) and at the baseline's knee (``epp.replay.knee``):

- hit ratio ≥ 0.95 × the capacity bound (one LRU as large as the cluster's KV cache, trace order);
- TTFT p90 ≤ 0.7 × the baseline's at the knee, and never more than 5 % worse at any rate run;
- TTFT p90 ≤ 0.15 × round-robin's at the knee;
- imbalance (max ÷ mean requests per engine) ≤ 1.5, and beside it the busy-time imbalance (max ÷ mean
  over engines of the seconds each spent stepping, ``summary.busy_imbalance``) ≤ 1.5, two verdicts;
- no request shed by the scheduler (the public traces carry no priorities that would ask for it);
  requests the engine refuses as longer than ``max_model_len`` are the trace's, not counted.

Issue #15 adds llm-d's sticky-until-saturated default as a second baseline (``versus``): TTFT p90 ≤
0.85 × its at the knee and ≤ 1.05 × at every rate from ×1 to the knee.

Why two imbalances: the request count is issue #10's measure and stays as it was, but it assumes equal
engines. On a mixed pool (``--profile llama-3.1-8b-h100:4,llama-3.2-1b-h100:4``, 1B engines ~5× faster
per token) equal request counts would leave the fast engines idle while the slow ones queue: a good
router *should* send the fast kind more requests (and the long prompts), so max ÷ mean requests reads
2–2.5 there even when every engine is equally busy, and ≤ 1.5 can be met only by routing worse. The
busy-time imbalance counts what each engine actually worked (its steps' GPU seconds, as the simulated
engines report them to the replay — a measurement, never a policy input): 1.0 when every engine was
busy as long as the others, whatever its speed. On a pool of one profile the two say nearly the same
(a request costs about the same everywhere, up to its prompt length and hit); on a mix only the
busy-time one means "balanced" — under load: at light load (×1) a router that sends most requests to
the fast kind answers sooner, and both read ~2 on the 4 + 4 mix for that reason (``default`` at ×1:
busy-time 2.07 synthetic / 2.13 conversation, TTFT p90 0.50× / 0.28× gie-default's; at the knee
1.21 / 1.25, bench/RESULTS.md, branch ``mixfloor``). Live replay does not see the engines' busy time:
that verdict is n/a.

Each verdict carries the numbers that explain a miss, from the trace and the engines: the capacity and
ideal bounds and the best hit ratio any policy reached; the policy's unloaded TTFT p90 (pure prefill
time with its own hits, no queueing), which no load can go below, against the limit it must meet.
A trace without prefix information has a capacity bound of 0: its hit target is vacuous (``met`` None),
never "met".
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

HIT_OF_CAPACITY = 0.95
P90_OF_BASELINE_AT_KNEE = 0.7
P90_OF_BASELINE_ANY_RATE = 1.05
P90_OF_ROUND_ROBIN_AT_KNEE = 0.15
P90_OF_PEER_AT_KNEE = 0.85
MAX_IMBALANCE = 1.5

Summary = dict[str, Any]
"""One ``summary.json`` object (``epp.replay.summary.SUMMARY_KEYS``)."""


@dataclass(frozen=True, slots=True)
class Verdict:
    """One target at one load. ``met`` is None when the target does not apply (``why`` says why)."""

    target: str
    at: str
    value: float | None
    limit: str
    met: bool | None
    why: str = ""


@dataclass(frozen=True, slots=True)
class Loads:
    """The rate scales the targets are judged at; ``knee`` None when the baseline has no knee."""

    knee: float | None
    unloaded: float | None = None


class _Runs:
    def __init__(self, summaries: Sequence[Summary]) -> None:
        self._by = {(s["policy"], s["rate_scale"]): s for s in summaries}
        self.summaries = summaries

    def get(self, policy: str, rate: float | None) -> Summary | None:
        return None if rate is None else self._by.get((policy, rate))

    def rates(self, policy: str) -> list[float]:
        return sorted(rate for p, rate in self._by if p == policy)


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def _label(rate: float, loads: Loads) -> str:
    if rate == loads.knee:
        return f"knee ×{rate:.3g}"
    return "unloaded" if rate == loads.unloaded else f"×{rate:.3g}"


def _judge(value: float | None, ok: bool) -> bool | None:
    return None if value is None else ok


def _hit(runs: _Runs, policy: str, rate: float | None, at: str) -> Verdict:
    limit = f"≥ {HIT_OF_CAPACITY:g} × capacity"
    run = runs.get(policy, rate)
    if run is None:
        return Verdict("hit ÷ capacity bound", at, None, limit, None, "not run")
    capacity, ideal = run["capacity_hit_ratio"], run["ideal_hit_ratio"]
    if not capacity:
        return Verdict("hit ÷ capacity bound", at, None, limit, None,
                       "vacuous: the trace carries no prefix information (capacity bound 0)")  # fmt: skip
    value = _ratio(run["hit_ratio"], capacity)
    met = _judge(value, value is not None and value >= HIT_OF_CAPACITY)
    why = ""
    if met is False:
        peers = [s for s in runs.summaries if s["rate_scale"] == rate and s["hit_ratio"] is not None]
        best = max(peers, key=lambda s: s["hit_ratio"])
        why = (
            f"hit {run['hit_ratio']:.1%} vs capacity bound {capacity:.1%} (ideal, unlimited cache: {ideal:.1%}); "
            f"best of any policy here: {best['policy']} {best['hit_ratio']:.1%} ({best['hit_ratio'] / capacity:.2f})"
        )
    return Verdict("hit ÷ capacity bound", at, value, limit, met, why)


def _p90(
    runs: _Runs, policy: str, other: str, rate: float | None, at: str, bound: float, loads: Loads
) -> Verdict:
    target = f"TTFT p90 ÷ {other}"
    limit = f"≤ {bound:g}"
    mine, theirs = runs.get(policy, rate), runs.get(other, rate)
    if mine is None or theirs is None:
        return Verdict(target, at, None, limit, None, "no knee" if rate is None else "not run")
    value = _ratio(mine["ttft_p90"], theirs["ttft_p90"])
    met = _judge(value, value is not None and value <= bound)
    why = ""
    if met is False:
        why = f"{mine['ttft_p90']:.3f} s vs {other} {theirs['ttft_p90']:.3f} s; limit {bound * theirs['ttft_p90']:.3f} s"
        floor = runs.get(policy, loads.unloaded)
        if floor is not None and floor["ttft_p90"] is not None:
            why += (
                f"; {policy} unloaded (no queueing) p90 {floor['ttft_p90']:.3f} s "
                f"= {floor['ttft_p90'] / theirs['ttft_p90']:.2f} × {other} here"
            )
    return Verdict(target, at, value, limit, met, why)


def _worst_p90(runs: _Runs, policy: str, baseline: str, loads: Loads, up_to: float | None = None) -> Verdict:
    """The largest p90 ratio over every rate both policies ran at (at most ``up_to``, when given)."""
    target = f"TTFT p90 ÷ {baseline}, worst rate" + (" up to the knee" if up_to is not None else "")
    limit = f"≤ {P90_OF_BASELINE_ANY_RATE:g}"
    pairs: list[tuple[float, float, float, float]] = []  # (ratio, rate, mine, theirs)
    for rate in runs.rates(policy):
        if up_to is not None and (rate > up_to or rate < 1.0):
            continue
        mine, theirs = runs.get(policy, rate), runs.get(baseline, rate)
        if mine is not None and theirs is not None and mine["ttft_p90"] is not None and theirs["ttft_p90"]:
            pairs.append((mine["ttft_p90"] / theirs["ttft_p90"], rate, mine["ttft_p90"], theirs["ttft_p90"]))
    if not pairs:
        return Verdict(target, "every rate", None, limit, None, "not run")
    value, rate, mine_p90, theirs_p90 = max(pairs)
    met = value <= P90_OF_BASELINE_ANY_RATE
    why = "" if met else f"{mine_p90:.3f} s vs {baseline} {theirs_p90:.3f} s"
    return Verdict(target, f"{_label(rate, loads)} (worst of {len(pairs)} rates)", value, limit, met, why)


def _imbalance(runs: _Runs, policy: str, rate: float | None, at: str) -> Verdict:
    limit = f"≤ {MAX_IMBALANCE:g}"
    run = runs.get(policy, rate)
    value = None if run is None else run["imbalance"]
    return Verdict("imbalance (max ÷ mean per engine)", at, value, limit,
                   _judge(value, value is not None and value <= MAX_IMBALANCE))  # fmt: skip


def _busy_imbalance(runs: _Runs, policy: str, rate: float | None, at: str) -> Verdict:
    """Max ÷ mean busy seconds per engine (``summary.busy_imbalance``), held to the same limit as the
    request count's; n/a when the run does not carry it (live replay, or a summary from before it)."""
    target = "busy-time imbalance (max ÷ mean busy s per engine)"
    limit = f"≤ {MAX_IMBALANCE:g}"
    run = runs.get(policy, rate)
    if run is None:
        return Verdict(target, at, None, limit, None, "no knee" if rate is None else "not run")
    value = run.get("busy_imbalance")
    if value is None:
        return Verdict(target, at, None, limit, None, "not measured (live replay sees no engine busy time)")
    return Verdict(target, at, value, limit, value <= MAX_IMBALANCE)


def _shed(runs: _Runs, policy: str) -> Verdict:
    """Scheduler sheds summed over every rate; engine refusals of too-long prompts are excluded."""
    mine = [s for s in runs.summaries if s["policy"] == policy]
    value = sum(s["shed"] - s["shed_too_long"] for s in mine)
    too_long = max((s["shed_too_long"] for s in mine), default=0)
    why = f"{too_long} request(s) per run refused by the engine as longer than max_model_len, not counted" if too_long else ""
    return Verdict("shed by the scheduler", f"all {len(mine)} rates", float(value), "= 0", value == 0, why)


def evaluate(
    summaries: Sequence[Summary],
    loads: Loads,
    policy: str = "default",
    baseline: str = "gie-default",
    reference: str = "round-robin",
) -> list[Verdict]:
    """Every target for ``policy`` on one trace, in the issue's order."""
    runs = _Runs(summaries)
    knee_at = "no knee" if loads.knee is None else _label(loads.knee, loads)
    return [
        _hit(runs, policy, 1.0, "×1"),
        _hit(runs, policy, loads.knee, knee_at),
        _p90(runs, policy, baseline, loads.knee, knee_at, P90_OF_BASELINE_AT_KNEE, loads),
        _worst_p90(runs, policy, baseline, loads),
        _p90(runs, policy, reference, loads.knee, knee_at, P90_OF_ROUND_ROBIN_AT_KNEE, loads),
        _imbalance(runs, policy, 1.0, "×1"),
        _imbalance(runs, policy, loads.knee, knee_at),
        _busy_imbalance(runs, policy, 1.0, "×1"),
        _busy_imbalance(runs, policy, loads.knee, knee_at),
        _shed(runs, policy),
    ]


def versus(summaries: Sequence[Summary], loads: Loads, policy: str, peer: str) -> list[Verdict]:
    """Issue #15's targets against a second baseline: TTFT p90 at its knee, and the worst rate from ×1
    to the knee (the gie-default knee: ``loads.knee``)."""
    runs = _Runs(summaries)
    knee_at = "no knee" if loads.knee is None else _label(loads.knee, loads)
    return [
        _p90(runs, policy, peer, loads.knee, knee_at, P90_OF_PEER_AT_KNEE, loads),
        _worst_p90(runs, policy, peer, loads, up_to=loads.knee if loads.knee is not None else 1.0),
    ]
