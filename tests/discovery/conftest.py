"""Fixtures for discovery tests: a running fake kube-apiserver and a kubeconfig for it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from epp.datastore import Datastore, Endpoint
from epp.discovery.reflector import ReflectorTiming
from tests.fakes.kube_apiserver import FakeKubeApiServer

# Fast reconnects so outages of a few seconds are followed quickly; production defaults are client-go's.
FAST = ReflectorTiming(watch_timeout=30, idle_timeout=5.0, initial_backoff=0.05, max_backoff=0.5,
                       resync_period=600.0, absent_retry=0.3)


@pytest.fixture
async def apiserver() -> AsyncIterator[FakeKubeApiServer]:
    async with FakeKubeApiServer(bookmark_interval=0.2) as server:
        yield server


@pytest.fixture
def kubeconfig(apiserver: FakeKubeApiServer, tmp_path: Path) -> str:
    return str(apiserver.write_kubeconfig(tmp_path / "kubeconfig"))


def names(datastore: Datastore) -> set[str]:
    return {state.name for state in datastore.endpoints()}


class RecordingListener:
    """A datastore listener like the prefix index and the poller: records every add and remove."""

    def __init__(self) -> None:
        self.added: list[str] = []
        self.removed: list[str] = []

    def endpoint_added(self, endpoint: Endpoint) -> None:
        self.added.append(endpoint.name)

    def endpoint_removed(self, endpoint: Endpoint) -> None:
        self.removed.append(endpoint.name)
