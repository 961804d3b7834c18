"""Fixtures for discovery tests: a running fake kube-apiserver, a kubeconfig for it, a bounded wait."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
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
    server = FakeKubeApiServer(bookmark_interval=0.2)
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


@pytest.fixture
def kubeconfig(apiserver: FakeKubeApiServer, tmp_path: Path) -> str:
    return str(apiserver.write_kubeconfig(tmp_path / "kubeconfig"))


async def wait_for(predicate: Callable[[], bool], timeout: float = 10.0, what: str = "condition") -> None:
    """Poll until ``predicate()`` holds; fail (not hang) after ``timeout`` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


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
