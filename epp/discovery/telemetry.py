"""Prometheus series for Kubernetes discovery, registered only when a registry is handed in.

* ``epp_discovery_api_reachable{resource}`` — 1 while the last list/watch call for that collection
  succeeded, 0 while the API server is unreachable (endpoints are then the last known ones);
* ``epp_discovery_relists_total{resource,reason}`` — full lists (``initial``, ``gone`` = 410,
  ``resync``, ``absent`` = CRD missing, ``selector`` = pool selector changed);
* ``epp_leader_election_is_leader`` — 1 on the replica that holds the Lease (absent without HA).
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge


class DiscoveryMetrics:
    """No-op without a registry, so tests and benches need not care."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self._reachable: Gauge | None = None
        self._relists: Counter | None = None
        self._leader: Gauge | None = None
        if registry is not None:
            self._reachable = Gauge(
                "epp_discovery_api_reachable", "Whether the Kubernetes API answered the last call for a collection.",
                ["resource"], registry=registry,
            )
            self._relists = Counter(
                "epp_discovery_relists", "Full lists of a watched collection, by reason.",
                ["resource", "reason"], registry=registry,
            )
            self._leader = Gauge(
                "epp_leader_election_is_leader", "1 while this replica holds the leader Lease.", registry=registry,
            )

    def reachable(self, resource: str, up: bool) -> None:
        if self._reachable is not None:
            self._reachable.labels(resource=resource).set(1 if up else 0)

    def relisted(self, resource: str, reason: str) -> None:
        if self._relists is not None:
            self._relists.labels(resource=resource, reason=reason).inc()

    def leader(self, is_leader: bool) -> None:
        if self._leader is not None:
            self._leader.set(1 if is_leader else 0)
