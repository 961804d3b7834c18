"""The datastore: one owner for endpoint membership, metrics snapshots and in-flight counters."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, Protocol

from epp._util.clock import Clock, WallClock
from epp.datastore.endpoint import Endpoint, EndpointMetrics, EndpointState


class DatastoreListener(Protocol):
    """Told when membership changes, so per-endpoint state elsewhere (prefix index, pollers) follows."""

    def endpoint_added(self, endpoint: Endpoint) -> None: ...

    def endpoint_removed(self, endpoint: Endpoint) -> None: ...


class Datastore:
    """Endpoints by name, their latest metrics, and whether discovery has completed a first sync.

    Staleness is judged against the injected clock: a snapshot older than ``staleness_threshold``
    seconds is stale, and so is an endpoint never scraped.
    """

    def __init__(self, clock: Clock | None = None, staleness_threshold: float = 2.0) -> None:
        self.clock: Clock = clock or WallClock()
        self.staleness_threshold = staleness_threshold
        self._states: dict[str, EndpointState] = {}
        self._listeners: list[DatastoreListener] = []
        self._synced = False

    # -- membership (discovery) -------------------------------------------------------------
    def add_listener(self, listener: DatastoreListener) -> None:
        self._listeners.append(listener)
        for state in self._states.values():
            listener.endpoint_added(state.endpoint)

    def remove_listener(self, listener: DatastoreListener) -> None:
        """Stop telling ``listener``; a stopped component must not keep reacting to membership."""
        self._listeners.remove(listener)

    def upsert(self, endpoint: Endpoint) -> None:
        """Add an endpoint or replace its identity; metrics and counters survive a label change."""
        state = self._states.get(endpoint.name)
        if state is None:
            self._states[endpoint.name] = EndpointState(endpoint)
            for listener in self._listeners:
                listener.endpoint_added(endpoint)
        elif state.endpoint != endpoint:
            moved = (state.endpoint.address, state.endpoint.port) != (endpoint.address, endpoint.port)
            if moved:
                self.remove(endpoint.name)
                self.upsert(endpoint)
            else:
                state.endpoint = endpoint

    def remove(self, name: str) -> None:
        state = self._states.pop(name, None)
        if state is not None:
            for listener in self._listeners:
                listener.endpoint_removed(state.endpoint)

    def replace_all(self, endpoints: Iterable[Endpoint]) -> None:
        """Make membership exactly ``endpoints`` (a full relist), touching only what changed."""
        wanted = {e.name: e for e in endpoints}
        for name in [n for n in self._states if n not in wanted]:
            self.remove(name)
        for endpoint in wanted.values():
            self.upsert(endpoint)

    def mark_synced(self) -> None:
        """Discovery has listed everything once; health may now report SERVING."""
        self._synced = True

    @property
    def synced(self) -> bool:
        return self._synced

    # -- reads (scheduling) -------------------------------------------------------------------
    def get(self, name: str) -> EndpointState | None:
        return self._states.get(name)

    def endpoints(self) -> list[EndpointState]:
        """All endpoints, with ``stale`` refreshed against the clock."""
        now = self.clock.now()
        limit = self.staleness_threshold
        states = list(self._states.values())
        for state in states:
            m = state.metrics
            state.stale = m is None or now - m.scraped_at > limit
        return states

    def __len__(self) -> int:
        return len(self._states)

    # -- metrics (poller) --------------------------------------------------------------------
    def update_metrics(self, name: str, metrics: EndpointMetrics) -> None:
        state = self._states.get(name)
        if state is not None:
            state.metrics = metrics
            state.scrape_error = None
            state.stale = False

    def record_scrape_error(self, name: str, error: str) -> None:
        """Keep the last good snapshot (it ages into staleness) and remember why the scrape failed."""
        state = self._states.get(name)
        if state is not None:
            state.scrape_error = error

    def update_attributes(self, name: str, values: Mapping[str, Any]) -> None:
        """Merge named attributes from a data source other than the engine's ``/metrics`` (DCGM, models)."""
        state = self._states.get(name)
        if state is not None:
            state.attributes.update(values)

    # -- in-flight load (director) -------------------------------------------------------------
    def request_started(self, name: str, tokens: int) -> None:
        state = self._states.get(name)
        if state is not None:
            state.inflight_requests += 1
            state.inflight_tokens += tokens

    def request_finished(self, name: str, tokens: int, started_on: EndpointState | None = None) -> None:
        """Release one request. With ``started_on`` (the state it was counted on), nothing is released if
        that endpoint has since been replaced under the same name (a pod that moved): the new endpoint's
        counters never saw the request."""
        state = self._states.get(name)
        if state is not None and (started_on is None or state is started_on):
            state.inflight_requests = max(0, state.inflight_requests - 1)
            state.inflight_tokens = max(0, state.inflight_tokens - tokens)
