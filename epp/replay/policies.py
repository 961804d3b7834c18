"""Policy names as ``epp replay --policy`` takes them: a scheduler preset, ``default``, or a config file."""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

from epp._util.clock import Clock
from epp.config import ConfigError, EndpointPickerConfig, load_config, load_scheduler
from epp.datastore import Datastore
from epp.director import AdmissionPolicy
from epp.flowcontrol.build import build_admission, flow_control_settings
from epp.scheduling import Scheduler
from epp.config.presets import DEFAULT_PRESET, PRESETS

DEFAULT = "default"
"""``epp serve``'s policy when no config is given: ``DEFAULT_PRESET`` (the ``default`` preset, which
routes to the endpoint with the smallest predicted time to first token; see ``bench/RESULTS.md``)."""


@dataclass(frozen=True, slots=True)
class Policy:
    """A label for reports and a factory: every run gets a fresh scheduler (no state leaks between runs),
    built on the run's virtual clock with its seed, so time-based plugin state follows virtual time."""

    label: str
    build: Callable[[Clock, int], Scheduler]
    config: EndpointPickerConfig

    def admission(self, scheduler: Scheduler, datastore: Datastore) -> AdmissionPolicy:
        """What ``epp serve`` admits with under this config: flow control's queues, or shedding."""
        return build_admission(self.config, scheduler, datastore.routable_endpoints, datastore.clock)


def known_policies() -> list[str]:
    return [DEFAULT, *sorted(p for p in PRESETS if p != DEFAULT)]


def resolve(spec: str) -> Policy:
    """``spec`` is ``default``, a preset name or an EndpointPickerConfig YAML path; a bad config or an
    unknown name raises ValueError naming what is wrong (checked now, before any run starts)."""
    source = DEFAULT_PRESET if spec == DEFAULT else spec
    try:
        config = load_config(source)
        flow_control_settings(config)
    except ConfigError as exc:
        raise ValueError(f"policy {spec!r}: {exc}") from None
    return Policy(spec, lambda clock, seed: load_scheduler(source, clock=clock, rng=random.Random(seed)), config)
