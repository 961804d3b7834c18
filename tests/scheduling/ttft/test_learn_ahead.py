"""The learner derives an endpoint's estimate when it learns (response path) instead of at the next
read (pick path); what every read returns must stay what the derivation at the read gives, bit for bit,
whatever happens in between: reads right after learning, other endpoints learning first (the pool's fit
moves), the same endpoint learning twice, the pool republishing, shared-state exports."""

from __future__ import annotations

import random

import pytest

from epp.scheduling.ttft import LatencyEstimate, LatencyLearner
from epp.scheduling.ttft.learn import EndpointLearner


def _run(seed: int) -> list[tuple[str, LatencyEstimate]]:
    """Random observations and reads over a few endpoints; every estimate read, in order."""
    rng = random.Random(seed)
    learner = LatencyLearner(8192)
    names = [f"e{i}" for i in range(rng.randrange(1, 6))]
    speed = {name: rng.uniform(0.3, 3.0) for name in names}
    reads: list[tuple[str, LatencyEstimate]] = []
    for _ in range(400):
        name = rng.choice(names)
        endpoint = learner[name]
        event = rng.random()
        if event < 0.35:
            steps, new = rng.randrange(1, 3), rng.uniform(0.01, 8)
            pairs = rng.uniform(0, 60)
            endpoint.observe_prefill((steps, new, pairs), speed[name] * (0.008 * steps + 0.025 * new + 0.001 * pairs))
        elif event < 0.6:
            n, ctx = rng.uniform(0, 2), rng.uniform(0, 10)
            endpoint.observe_decode((1.0, n, ctx), speed[name] * (0.008 + 0.001 * n + 0.003 * ctx))
        elif event < 0.95:
            reads.append((name, endpoint.estimate))
        else:
            reads.append((name, endpoint.own_estimate))  # as export_shared reads it
    return reads


@pytest.mark.parametrize("seed", range(8))
def test_estimates_derived_ahead_equal_the_ones_derived_at_the_read(seed: int, monkeypatch: pytest.MonkeyPatch) -> None:
    ahead = _run(seed)
    monkeypatch.setattr(EndpointLearner, "_speculate", lambda self: None)  # derive at the read only
    at_read = _run(seed)
    assert ahead == at_read
