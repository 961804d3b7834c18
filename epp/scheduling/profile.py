"""A scheduling profile: filters narrow the candidates, weighted scorers rank them, a picker chooses."""

from __future__ import annotations

from dataclasses import dataclass, field
from time import perf_counter_ns

from epp.datastore import EndpointState
from epp.request import LLMRequest
from epp.scheduling.framework import (
    FILTER, PICKER, SCORER, CycleState, DurationRecorder, Filter, Picker, PluginTimer, ProfileResult, Scorer,
)


@dataclass(slots=True)
class WeightedScorer:
    scorer: Scorer
    weight: float = 1.0


@dataclass(frozen=True, slots=True)
class _ProfileTimers:
    """Recorders aligned with a profile's filters and scorers, and its picker's."""

    filters: list[DurationRecorder]
    scorers: list[DurationRecorder]
    picker: DurationRecorder


@dataclass(slots=True)
class SchedulerProfile:
    """Runs filters → Σ weight·clamp(score, 0, 1) → picker over one candidate list.

    ``instrument`` (called by ``Scheduler.instrument`` once the profile is complete) has every plugin
    call timed with ``perf_counter_ns``; uninstrumented, the only cost is the clock read.
    """

    name: str
    picker: Picker
    filters: list[Filter] = field(default_factory=list)
    scorers: list[WeightedScorer] = field(default_factory=list)
    timers: _ProfileTimers | None = None

    def instrument(self, timer: PluginTimer | None) -> None:
        self.timers = None if timer is None else _ProfileTimers(
            [timer.recorder(FILTER, f) for f in self.filters],
            [timer.recorder(SCORER, ws.scorer) for ws in self.scorers],
            timer.recorder(PICKER, self.picker),
        )

    def run(self, cycle: CycleState, request: LLMRequest, candidates: list[EndpointState]) -> ProfileResult | None:
        """The profile's pick, or None when its filters left no endpoint."""
        timers = self.timers
        endpoints = candidates
        for i, f in enumerate(self.filters):
            t0 = perf_counter_ns()
            endpoints = f.filter(cycle, request, endpoints)
            if timers is not None:
                timers.filters[i](perf_counter_ns() - t0)
            if not endpoints:
                return None
        totals = [0.0] * len(endpoints)
        for i, ws in enumerate(self.scorers):
            t0 = perf_counter_ns()
            scores = ws.scorer.score(cycle, request, endpoints)
            if timers is not None:
                timers.scorers[i](perf_counter_ns() - t0)
            w = ws.weight
            totals = [t + w * (0.0 if s < 0.0 else 1.0 if s > 1.0 else s) for t, s in zip(totals, scores)]
        t0 = perf_counter_ns()
        picked = self.picker.pick(cycle, request, endpoints, totals)
        if timers is not None:
            timers.picker(perf_counter_ns() - t0)
        if not picked:
            return None
        return ProfileResult(picked, endpoints, totals)
