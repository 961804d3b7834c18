"""A scheduling profile: filters narrow the candidates, weighted scorers rank them, a picker chooses."""

from __future__ import annotations

from dataclasses import dataclass, field

from epp.datastore import EndpointState
from epp.request import LLMRequest
from epp.scheduling.framework import CycleState, Filter, Picker, ProfileResult, Scorer


@dataclass(slots=True)
class WeightedScorer:
    scorer: Scorer
    weight: float = 1.0


@dataclass(slots=True)
class SchedulerProfile:
    """Runs filters → Σ weight·clamp(score, 0, 1) → picker over one candidate list."""

    name: str
    picker: Picker
    filters: list[Filter] = field(default_factory=list)
    scorers: list[WeightedScorer] = field(default_factory=list)

    def run(self, cycle: CycleState, request: LLMRequest, candidates: list[EndpointState]) -> ProfileResult | None:
        """The profile's pick, or None when its filters left no endpoint."""
        endpoints = candidates
        for f in self.filters:
            endpoints = f.filter(cycle, request, endpoints)
            if not endpoints:
                return None
        totals = [0.0] * len(endpoints)
        for ws in self.scorers:
            w = ws.weight
            totals = [
                t + w * (0.0 if s < 0.0 else 1.0 if s > 1.0 else s)
                for t, s in zip(totals, ws.scorer.score(cycle, request, endpoints))
            ]
        picked = self.picker.pick(cycle, request, endpoints, totals)
        if not picked:
            return None
        return ProfileResult(picked, endpoints, totals)
