"""``epp_endpoint_health{endpoint,state}`` and ``epp_endpoint_ejections_total{endpoint}``, read from the
datastore's health records at scrape time (nothing on the request path)."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from epp.datastore import Datastore, HealthState


class HealthCollector(Collector):
    def __init__(self, datastore: Datastore) -> None:
        self.datastore = datastore

    def collect(self) -> Iterator[Metric]:
        states = self.datastore.endpoints()
        health = GaugeMetricFamily(
            "epp_endpoint_health",
            "1 for each endpoint's passive-health state (healthy, ejected, probing), 0 for the others.",
            labels=("endpoint", "state"),
        )
        ejections = CounterMetricFamily(
            "epp_endpoint_ejections", "Times each endpoint was ejected by passive health.", labels=("endpoint",)
        )
        for s in states:
            for state in HealthState:
                health.add_metric((s.name, state.value), 1.0 if s.health.state is state else 0.0)
            ejections.add_metric((s.name,), s.health.ejections)
        yield health
        yield ejections
