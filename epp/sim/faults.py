"""Injected failures, so routing and scraping can be tested against a misbehaving engine.

All decisions come from one seeded RNG: the same seed and the same request order fail the same way.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

METRICS_FAULTS = ("garbage", "hang")


@dataclass(frozen=True, slots=True)
class FaultConfig:
    extra_latency: float = 0.0
    """Seconds of wall time added before each inference request is handled."""
    error_rate: float = 0.0
    """Probability that an inference request gets a 500 OpenAI error instead of an answer."""
    metrics: str | None = None
    """``garbage``: /metrics answers 200 with text no Prometheus parser accepts; ``hang``: it never answers."""
    crash_after: int | None = None
    """The process exits (status 1, no cleanup) once this many inference requests have finished."""

    def __post_init__(self) -> None:
        if self.extra_latency < 0 or not 0 <= self.error_rate <= 1:
            raise ValueError("extra latency must be >= 0 and the error rate in [0, 1]")
        if self.metrics is not None and self.metrics not in METRICS_FAULTS:
            raise ValueError(f"metrics fault must be one of {', '.join(METRICS_FAULTS)}")
        if self.crash_after is not None and self.crash_after < 1:
            raise ValueError("crash-after must be >= 1")


class Faults:
    def __init__(self, config: FaultConfig, seed: int) -> None:
        self.config = config
        self._rng = random.Random(seed)
        self._finished = 0

    def fail_this_request(self) -> bool:
        return self.config.error_rate > 0 and self._rng.random() < self.config.error_rate

    def request_finished(self) -> bool:
        """Count a finished request; True when the process should crash now."""
        self._finished += 1
        return self.config.crash_after is not None and self._finished >= self.config.crash_after
