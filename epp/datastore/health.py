"""Passive endpoint health (outlier detection) from what epp already sees: request outcomes and scrapes.

Envoy's outlier detection, done in the picker so that every gateway flavour benefits and so that the
scorers never see a dead endpoint at all (a dead engine fails requests in microseconds; to a load- or
latency-based scorer it looks like the fastest, emptiest endpoint and *attracts* traffic):

* ``consecutive_failures`` endpoint faults in a row (5xx, including Envoy's for a connect failure or reset) eject it;
  so does a streak of scrapes that could not connect or timed out (a dead or hung process) longer than
  ``scrape_failure_window``. A ``/metrics`` that answers garbage or an HTTP error comes from a live
  server (often a misconfigured path or engine type): its metrics go stale, the endpoint keeps serving.
* An ejected endpoint stays out for ``base_ejection`` × 2^(ejections in a row), at most
  ``max_ejection``. It comes back as ``probing`` only after that time *and* a successful scrape since it
  was ejected (an endpoint never scraped, as in replay without a poller, needs only the time): probing
  endpoints take one trial request at a time; its success makes the endpoint healthy, its failure ejects
  it again for twice as long. A streak of ejections is forgotten after ``max_ejection`` healthy.
* Panic threshold: at most ``max_ejection_percent`` of the endpoints are ejected at once (always at
  least one of two or more), and never the last routable one, so a fault that fails every endpoint (a
  poisoned request, a gateway problem) cannot empty the pool.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass


# Scrape failure reasons (``epp.metrics.poller.ScrapeFailure``) that say the process is dead or hung.
LIVENESS_FAILURES = frozenset({"connect", "timeout"})


class HealthState(enum.Enum):
    HEALTHY = "healthy"
    EJECTED = "ejected"
    PROBING = "probing"


@dataclass(frozen=True, slots=True)
class HealthParams:
    """The ``--endpoint-health*`` flags. ``enabled=False`` keeps every endpoint routable (the reference's behaviour)."""

    enabled: bool = True
    consecutive_failures: int = 3
    base_ejection: float = 1.0
    max_ejection: float = 30.0
    scrape_failure_window: float = 2.0
    max_ejection_percent: float = 50.0

    def __post_init__(self) -> None:
        if self.consecutive_failures < 1:
            raise ValueError("--endpoint-health-consecutive-failures must be at least 1")
        if not 0 < self.base_ejection <= self.max_ejection:
            raise ValueError("--endpoint-health-base-ejection-time must be positive and at most --endpoint-health-max-ejection-time")
        if self.scrape_failure_window <= 0:
            raise ValueError("--endpoint-health-scrape-failure-window must be positive")
        if not 0 <= self.max_ejection_percent <= 100:
            raise ValueError("--endpoint-health-max-ejection-percent must be in [0, 100]")


@dataclass(slots=True)
class EndpointHealth:
    """One endpoint's health record; changed only through ``HealthPolicy``."""

    since: float
    """When the endpoint was added, then when it was last scraped successfully."""
    state: HealthState = HealthState.HEALTHY
    failures: int = 0
    ejections: int = 0
    streak: int = 0
    ejected_at: float = 0.0
    ejected_until: float = 0.0
    healthy_since: float = 0.0
    scraped: bool = False
    trial: bool = False
    reason: str = ""


class HealthPolicy:
    """The transitions above; the datastore calls it and owns the records (one per endpoint)."""

    def __init__(self, params: HealthParams | None = None) -> None:
        self.params = params or HealthParams()

    # -- signals ---------------------------------------------------------------------------------
    def request_failed(self, health: EndpointHealth, reason: str, now: float, ejected: int, total: int) -> bool:
        """An endpoint fault. True when it ejected the endpoint (``ejected`` of ``total`` already are)."""
        health.trial = False
        health.failures += 1
        if health.state is HealthState.PROBING or health.failures >= self.params.consecutive_failures:
            return self._eject(health, reason, now, ejected, total)
        return False

    def request_succeeded(self, health: EndpointHealth, now: float) -> None:
        health.failures = 0
        health.trial = False
        if health.state is HealthState.PROBING:
            health.state = HealthState.HEALTHY
            health.healthy_since = now

    def request_ended(self, health: EndpointHealth) -> None:
        """Neither: the client left, or the outcome is unknown. A trial slot is freed, nothing learnt."""
        health.trial = False

    def scrape_succeeded(self, health: EndpointHealth, now: float) -> None:
        health.since = now
        health.scraped = True

    def scrape_failed(self, health: EndpointHealth, reason: str, now: float, ejected: int, total: int) -> bool:
        health.scraped = True
        if (reason not in LIVENESS_FAILURES or health.state is HealthState.EJECTED
                or now - health.since < self.params.scrape_failure_window):
            return False
        return self._eject(health, f"scrape-{reason}", now, ejected, total)

    # -- routing ---------------------------------------------------------------------------------
    def routable(self, health: EndpointHealth, now: float) -> bool:
        """May a new request go here? Moves an ejected endpoint whose time is up to probing."""
        if not self.params.enabled:
            return True
        state = health.state
        if state is HealthState.EJECTED:
            if now < health.ejected_until or (health.scraped and health.since <= health.ejected_at):
                return False
            health.state = state = HealthState.PROBING
            health.failures = 0
        return state is HealthState.HEALTHY or not health.trial

    def routed(self, health: EndpointHealth) -> None:
        """A request was sent here as primary: a probing endpoint's trial is under way."""
        if health.state is HealthState.PROBING:
            health.trial = True

    def _eject(self, health: EndpointHealth, reason: str, now: float, ejected: int, total: int) -> bool:
        p = self.params
        limit = min(total - 1, max(1, math.floor(total * p.max_ejection_percent / 100)))
        if not p.enabled or ejected >= limit:
            if health.state is HealthState.PROBING:  # a failed trial that may not eject: back in service
                health.state, health.healthy_since = HealthState.HEALTHY, now
            return False
        if health.state is HealthState.HEALTHY and now - health.healthy_since >= p.max_ejection:
            health.streak = 0
        health.state = HealthState.EJECTED
        health.ejections += 1
        health.ejected_at = now
        health.ejected_until = now + min(p.max_ejection, p.base_ejection * 2 ** health.streak)
        health.streak += 1
        health.failures = 0
        health.trial = False
        health.reason = reason
        return True
