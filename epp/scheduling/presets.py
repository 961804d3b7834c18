"""Named policies, reachable wherever a config is accepted."""

from __future__ import annotations

from collections.abc import Callable

from epp.scheduling.plugins.pickers.max_score import MaxScorePicker
from epp.scheduling.plugins.profiles.single import SingleProfileHandler
from epp.scheduling.plugins.scorers.active_request import ActiveRequestScorer
from epp.scheduling.profile import SchedulerProfile, WeightedScorer
from epp.scheduling.scheduler import Scheduler


def least_inflight() -> Scheduler:
    """Fewest requests in flight from this epp, random among equals."""
    profile = SchedulerProfile("default", MaxScorePicker(), scorers=[WeightedScorer(ActiveRequestScorer())])
    return Scheduler({"default": profile}, SingleProfileHandler())


PRESETS: dict[str, Callable[[], Scheduler]] = {"least-inflight": least_inflight}


def build_preset(name: str) -> Scheduler:
    try:
        return PRESETS[name]()
    except KeyError:
        raise ValueError(f"unknown policy preset {name!r}; known: {', '.join(sorted(PRESETS))}") from None
