from __future__ import annotations

from epp._util.clock import VirtualClock
from epp.datastore import Datastore, Endpoint, EndpointMetrics


class Recorder:
    def __init__(self) -> None:
        self.events: list[tuple[str, str]] = []

    def endpoint_added(self, endpoint: Endpoint) -> None:
        self.events.append(("add", endpoint.name))

    def endpoint_removed(self, endpoint: Endpoint) -> None:
        self.events.append(("remove", endpoint.name))


def test_replace_all_touches_only_what_changed() -> None:
    store = Datastore()
    rec = Recorder()
    store.add_listener(rec)
    store.replace_all([Endpoint("a", "10.0.0.1", 8000), Endpoint("b", "10.0.0.2", 8000)])
    store.request_started("a", 10)
    store.replace_all([Endpoint("a", "10.0.0.1", 8000, labels={"x": "y"}), Endpoint("c", "10.0.0.3", 8000)])
    assert rec.events == [("add", "a"), ("add", "b"), ("remove", "b"), ("add", "c")]
    a = store.get("a")
    assert a is not None and a.inflight_requests == 1 and a.endpoint.labels == {"x": "y"}


def test_address_change_is_a_new_endpoint() -> None:
    store = Datastore()
    rec = Recorder()
    store.add_listener(rec)
    store.upsert(Endpoint("a", "10.0.0.1", 8000))
    store.upsert(Endpoint("a", "10.0.0.9", 8000))
    assert rec.events == [("add", "a"), ("remove", "a"), ("add", "a")]


def test_metrics_age_into_staleness_and_errors_keep_last_snapshot() -> None:
    clock = VirtualClock()
    store = Datastore(clock, staleness_threshold=2.0)
    store.upsert(Endpoint("a", "10.0.0.1", 8000))
    assert store.endpoints()[0].stale
    store.update_metrics("a", EndpointMetrics(scraped_at=0.0, waiting=3))
    assert not store.endpoints()[0].stale
    clock.advance(2.5)
    store.record_scrape_error("a", "timeout")
    state = store.endpoints()[0]
    assert state.stale and state.scrape_error == "timeout" and state.metrics is not None and state.metrics.waiting == 3


def test_inflight_counters_never_go_negative() -> None:
    store = Datastore()
    store.upsert(Endpoint("a", "10.0.0.1", 8000))
    store.request_finished("a", 5)
    state = store.get("a")
    assert state is not None and (state.inflight_requests, state.inflight_tokens) == (0, 0)


def test_ipv6_hostport_is_bracketed() -> None:
    assert Endpoint("v6", "fd00::1", 8000).hostport == "[fd00::1]:8000"


def test_removed_listener_hears_nothing_more() -> None:
    store = Datastore()
    rec = Recorder()
    store.add_listener(rec)
    store.remove_listener(rec)
    store.upsert(Endpoint("a", "10.0.0.1", 8000))
    assert rec.events == []
