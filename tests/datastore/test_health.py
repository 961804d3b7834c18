"""Passive endpoint health: ejection on consecutive faults or a scrape-failure streak, growing backoff,
return on a good scrape plus one trial request, and the panic threshold."""

from __future__ import annotations

import pytest

from epp._util.clock import VirtualClock
from epp.datastore import Datastore, Endpoint, EndpointMetrics, HealthParams, HealthState


def pool(n: int = 3, **params: object) -> tuple[Datastore, VirtualClock]:
    clock = VirtualClock()
    ds = Datastore(clock, health=HealthParams(**params))  # type: ignore[arg-type]
    for i in range(n):
        ds.upsert(Endpoint(f"e{i}", f"10.0.0.{i + 1}", 8000))
    return ds, clock


def routable(ds: Datastore) -> list[str]:
    return [s.name for s in ds.routable(ds.endpoints())]


def fail(ds: Datastore, name: str, times: int = 1) -> None:
    for _ in range(times):
        ds.request_outcome(ds.get(name), "http-503")  # type: ignore[arg-type]


def scrape(ds: Datastore, clock: VirtualClock, name: str) -> None:
    ds.update_metrics(name, EndpointMetrics(clock.now()))


def test_consecutive_faults_eject_and_a_success_in_between_resets_the_count() -> None:
    ds, _ = pool()
    fail(ds, "e0", 2)
    ds.request_outcome(ds.get("e0"), None)  # type: ignore[arg-type]
    fail(ds, "e0", 2)
    assert routable(ds) == ["e0", "e1", "e2"]
    fail(ds, "e0")
    assert routable(ds) == ["e1", "e2"] and ds.get("e0").health.reason == "http-503"  # type: ignore[union-attr]
    ds.request_outcome(ds.get("e1"), "http-503", judged=False)  # type: ignore[arg-type]  # client left: not a fault
    assert ds.get("e1").health.failures == 0  # type: ignore[union-attr]


def test_an_ejected_endpoint_returns_after_its_time_and_a_good_scrape_then_one_trial_decides() -> None:
    ds, clock = pool(base_ejection=1.0, max_ejection=8.0)
    scrape(ds, clock, "e0")
    fail(ds, "e0", 3)
    clock.advance(1.5)
    assert "e0" not in routable(ds)  # time is up, but no scrape has succeeded since the ejection
    scrape(ds, clock, "e0")
    assert "e0" in routable(ds) and ds.get("e0").health.state is HealthState.PROBING  # type: ignore[union-attr]
    ds.routed(ds.get("e0"))  # type: ignore[arg-type]  # the trial is under way: no second request meanwhile
    assert "e0" not in routable(ds)
    fail(ds, "e0")  # the trial failed: out again, for twice as long
    health = ds.get("e0").health  # type: ignore[union-attr]
    assert health.state is HealthState.EJECTED and health.ejected_until - health.ejected_at == 2.0
    clock.advance(2.5)
    scrape(ds, clock, "e0")
    assert "e0" in routable(ds)
    ds.routed(ds.get("e0"))  # type: ignore[arg-type]
    ds.request_outcome(ds.get("e0"), None)  # type: ignore[arg-type]
    assert health.state is HealthState.HEALTHY and routable(ds) == ["e0", "e1", "e2"] and health.ejections == 2


def test_a_scrape_failure_streak_longer_than_the_window_ejects() -> None:
    ds, clock = pool(scrape_failure_window=2.0)
    scrape(ds, clock, "e1")
    clock.advance(1.0)
    ds.record_scrape_error("e1", "timeout: no answer", "timeout")
    assert "e1" in routable(ds)
    clock.advance(1.5)
    ds.record_scrape_error("e1", "timeout: no answer", "timeout")
    assert routable(ds) == ["e0", "e2"] and ds.get("e1").health.reason == "scrape-timeout"  # type: ignore[union-attr]


def test_a_live_server_with_broken_metrics_keeps_serving() -> None:
    ds, clock = pool(scrape_failure_window=2.0)
    for _ in range(5):  # garbage or an HTTP error: the process answers, only its metrics are unusable
        clock.advance(1.0)
        ds.record_scrape_error("e1", "parse: no vllm:num_requests_waiting", "parse")
        ds.record_scrape_error("e1", "HTTP 404", "http")
    assert routable(ds) == ["e0", "e1", "e2"]


@pytest.mark.parametrize(("n", "percent", "ejectable"), [(2, 50, 1), (3, 50, 1), (4, 50, 2), (3, 100, 2), (1, 100, 0), (5, 0, 1)])
def test_the_panic_threshold_never_ejects_the_last_endpoints(n: int, percent: float, ejectable: int) -> None:
    ds, _ = pool(n, max_ejection_percent=percent)
    for i in range(n):
        fail(ds, f"e{i}", 3)
    assert sum(s.health.state is HealthState.EJECTED for s in ds.endpoints()) == ejectable
    assert len(routable(ds)) == n - ejectable


def test_disabled_health_keeps_every_endpoint_routable() -> None:
    ds, _ = pool(enabled=False)
    fail(ds, "e0", 10)
    assert routable(ds) == ["e0", "e1", "e2"]


@pytest.mark.parametrize("bad", [{"consecutive_failures": 0}, {"base_ejection": 0}, {"base_ejection": 60.0},
                                 {"scrape_failure_window": 0}, {"max_ejection_percent": 101}])
def test_bad_parameters_are_refused(bad: dict[str, float]) -> None:
    with pytest.raises(ValueError, match="--endpoint-health-"):
        HealthParams(**bad)  # type: ignore[arg-type]
