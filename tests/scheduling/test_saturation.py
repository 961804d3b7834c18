from __future__ import annotations

import pytest

from epp._util.clock import VirtualClock
from epp.datastore import EndpointMetrics
from epp.scheduling.framework import CycleState
from epp.scheduling.saturation import UtilizationDetector, UtilizationParams
from tests.conftest import make_request, make_state


def state(name: str, waiting: int = 0, kv: float = 0.0, scraped_at: float = 10.0):  # type: ignore[no-untyped-def]
    return make_state(name, metrics=EndpointMetrics(scraped_at, waiting=waiting, kv_usage=kv))


@pytest.mark.parametrize(
    ("endpoints", "expected"),
    [
        ([state("a", waiting=0, kv=0.0)], 0.0),
        ([state("a", waiting=5)], 1.0),  # queue at threshold
        ([state("a", kv=0.4)], 0.5),  # 0.4 / 0.8
        ([state("a", waiting=1, kv=0.4), state("b", waiting=10)], (0.5 + 2.0) / 2),  # mean of per-endpoint max
        ([state("a", scraped_at=9.7)], 1.0),  # 300 ms old > 200 ms
        ([make_state("never-scraped")], 1.0),
        ([], 1.0),
    ],
)
def test_saturation(endpoints: list, expected: float) -> None:  # type: ignore[type-arg]
    detector = UtilizationDetector(VirtualClock(10.0))
    assert detector.saturation(endpoints) == pytest.approx(expected)
    assert detector.is_saturated(endpoints) is (expected >= 1.0)


def test_thresholds_and_staleness_are_parameters() -> None:
    clock = VirtualClock(10.0)
    params = UtilizationParams(queue_depth_threshold=10, kv_cache_util_threshold=0.5, metrics_staleness_threshold=1.0)
    detector = UtilizationDetector(clock, params=params)
    assert detector.saturation([state("a", waiting=5, kv=0.1, scraped_at=9.5)]) == pytest.approx(0.5)
    clock.advance(1.0)
    assert detector.saturation([state("a", waiting=5, kv=0.1, scraped_at=9.5)]) == 1.0


def test_filter_drops_saturated_and_stale_but_never_everything() -> None:
    detector = UtilizationDetector(VirtualClock(10.0), params=UtilizationParams(headroom=0.2))
    endpoints = [state("ok", waiting=6), state("full", waiting=7), state("hot", kv=0.97), state("old", scraped_at=1.0)]
    assert [e.name for e in detector.filter(CycleState(), make_request(), endpoints)] == ["ok"]
    dead = endpoints[1:]
    assert detector.filter(CycleState(), make_request(), dead) == dead
