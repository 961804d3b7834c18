"""Policy names as ``epp replay --policy`` takes them: a scheduler preset, ``default``, or a config file."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from epp._util.clock import Clock
from epp.scheduling import Scheduler
from epp.scheduling.presets import PRESETS, build_preset

DEFAULT = "default"
DEFAULT_PREFERENCE = ("gie-default", "least-inflight")
"""``default`` is epp's own default profile; until it exists it is the first of these presets that does."""


@dataclass(frozen=True, slots=True)
class Policy:
    """A label for reports and a factory: every run gets a fresh scheduler (no state leaks between runs),
    built on the run's virtual clock with its seed, so time-based plugin state follows virtual time."""

    label: str
    build: Callable[[Clock, int], Scheduler]


def default_preset() -> str:
    return next(name for name in DEFAULT_PREFERENCE if name in PRESETS)


def known_policies() -> list[str]:
    return [DEFAULT, *sorted(PRESETS)]


def resolve(spec: str) -> Policy:
    """``spec`` is a preset name or ``default``; ValueError lists the known names otherwise."""
    if spec == DEFAULT:
        preset = default_preset()
        return Policy(DEFAULT, lambda clock, seed: build_preset(preset))
    if spec in PRESETS:
        return Policy(spec, lambda clock, seed: build_preset(spec))
    raise ValueError(f"unknown policy {spec!r}; known: {', '.join(known_policies())}")
