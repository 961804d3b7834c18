"""The poller against real HTTP servers on 127.0.0.1: good, slow, garbage, erroring and refusing."""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from aiohttp import web
from prometheus_client import CollectorRegistry

from epp._util.clock import VirtualClock
from epp.datastore import Datastore, Endpoint, EndpointState
from epp.metrics import MetricsPoller
from tests.conftest import wait_for

DATA = Path(__file__).parent / "data"
VLLM = (DATA / "vllm.prom").read_text()
ERRORS = "llm_d_epp_datalayer_poll_errors_total"


class MetricsServer:
    """A /metrics server whose answer the test changes while it runs."""

    def __init__(self, text: str = VLLM) -> None:
        self.text = text
        self.status = 200
        self.hang = False
        self.hits = 0
        self.release = asyncio.Event()
        self.port = 0

    async def handle(self, request: web.Request) -> web.Response:
        self.hits += 1
        if self.hang:
            await self.release.wait()
        return web.Response(text=self.text, status=self.status, content_type="text/plain")


@asynccontextmanager
async def serving(*servers: MetricsServer) -> AsyncIterator[None]:
    runners = []
    try:
        for server in servers:
            app = web.Application()
            app.router.add_get("/metrics", server.handle)
            runner = web.AppRunner(app, shutdown_timeout=1.0)
            await runner.setup()
            runners.append(runner)
            sock = socket.socket()
            sock.bind(("127.0.0.1", 0))
            server.port = sock.getsockname()[1]
            await web.SockSite(runner, sock).start()
        yield
    finally:
        for server in servers:
            server.release.set()
        for runner in runners:
            await runner.cleanup()


@pytest.fixture
def refused_port() -> Iterator[int]:
    """A port bound but never listening: connections to it are refused, and nobody else can take it."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    yield sock.getsockname()[1]
    sock.close()


def state(ds: Datastore, name: str) -> EndpointState:
    s = ds.get(name)
    assert s is not None
    return s


def error_of(ds: Datastore, name: str) -> str:
    return state(ds, name).scrape_error or ""


async def test_good_slow_garbage_and_refused_endpoints(refused_port: int, caplog: pytest.LogCaptureFixture) -> None:
    good, slow, flaky = MetricsServer(), MetricsServer(), MetricsServer()
    slow.hang = True
    clock = VirtualClock(100.0)
    ds = Datastore(clock, staleness_threshold=2.0)
    registry = CollectorRegistry()
    caplog.set_level(logging.INFO, logger="epp.metrics.poller")
    async with serving(good, slow, flaky):
        ds.replace_all([
            Endpoint("good", "127.0.0.1", good.port),
            Endpoint("slow", "127.0.0.1", slow.port),
            Endpoint("flaky", "127.0.0.1", flaky.port),
            Endpoint("refused", "127.0.0.1", refused_port),
        ])
        async with MetricsPoller(ds, interval=0.02, timeout=0.3, registry=registry) as poller:
            assert poller.polled == {"good", "slow", "flaky", "refused"}
            await wait_for(lambda: state(ds, "good").metrics is not None, what="good scraped")
            await wait_for(lambda: state(ds, "flaky").metrics is not None, what="flaky scraped while healthy")
            await wait_for(lambda: error_of(ds, "refused").startswith("connect:"), what="refused marked")
            await wait_for(lambda: error_of(ds, "slow").startswith("timeout:"), what="slow marked")

            good_metrics = state(ds, "good").metrics
            assert good_metrics is not None and (good_metrics.waiting, good_metrics.running, good_metrics.scraped_at) == (3, 12, 100.0)
            assert state(ds, "slow").metrics is None and state(ds, "refused").metrics is None

            flaky.text = "<html>upstream connect error</html>"
            await wait_for(lambda: error_of(ds, "flaky").startswith("parse:"), what="garbage marked")
            flaky.status = 500
            await wait_for(lambda: error_of(ds, "flaky").startswith("http: HTTP 500"), what="HTTP error marked")

            clock.advance(5.0)  # only endpoints scraped after this are fresh
            await wait_for(lambda: state(ds, "good").metrics.scraped_at == 105.0, what="good refreshed")  # type: ignore[union-attr]
            stale = {s.name: s.stale for s in ds.endpoints()}
            assert stale == {"good": False, "slow": True, "flaky": True, "refused": True}
            flaky_state = state(ds, "flaky")
            assert flaky_state.metrics is not None and flaky_state.metrics.waiting == 3  # last good snapshot kept

            await wait_for(lambda: (registry.get_sample_value(ERRORS, {"source_type": "metrics-data-source", "reason": "connect"}) or 0) >= 5,
                           what="refusals counted on every tick")
            for reason in ("timeout", "parse", "http"):
                assert (registry.get_sample_value(ERRORS, {"source_type": "metrics-data-source", "reason": reason}) or 0) >= 1

            flaky.text, flaky.status = VLLM, 200
            await wait_for(lambda: state(ds, "flaky").scrape_error is None, what="flaky recovered")
    assert poller.polled == frozenset()

    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert sum("refused" in w for w in warnings) == 1  # once per state change, not per tick
    assert sum(w.startswith("metrics scrape of flaky") for w in warnings) == 2  # parse, then http
    assert any("flaky" in r.getMessage() and "recovered" in r.getMessage() for r in caplog.records)


async def test_membership_changes_start_and_stop_polling(refused_port: int) -> None:
    first, second = MetricsServer(), MetricsServer((DATA / "sglang.prom").read_text())
    ds = Datastore(VirtualClock())
    async with serving(first, second), MetricsPoller(ds, interval=0.02, timeout=0.5) as poller:
        assert poller.polled == frozenset()
        ds.upsert(Endpoint("a", "127.0.0.1", first.port))
        await wait_for(lambda: state(ds, "a").metrics is not None, what="added endpoint polled")

        ds.remove("a")
        assert poller.polled == frozenset()
        await wait_for(lambda: poller.idle, what="the removed endpoint's task to end")
        hits = first.hits
        await asyncio.sleep(0.1)  # nothing is left that could scrape it
        assert first.hits == hits, "removed endpoint still scraped"

        # Engine chosen per endpoint from its label; scraping uses metrics_port when set.
        ds.upsert(Endpoint("b", "127.0.0.1", refused_port, labels={"llm-d.ai/engine-type": "sglang"}, metrics_port=second.port))
        await wait_for(lambda: state(ds, "b").metrics is not None, what="sglang endpoint polled on its metrics port")
        b = state(ds, "b").metrics
        assert b is not None and (b.waiting, b.running, b.models) == (2, 17, frozenset({"Qwen/Qwen3-32B"}))

        # Moving an endpoint restarts its polling at the new address.
        ds.upsert(Endpoint("b", "127.0.0.2", refused_port, labels={"llm-d.ai/engine-type": "sglang"}))
        await wait_for(lambda: error_of(ds, "b").startswith("connect:"), what="moved endpoint scraped at its new address")
        assert poller.polled == {"b"}


async def test_stopped_poller_ignores_new_endpoints_and_cannot_restart() -> None:
    ds = Datastore()
    poller = MetricsPoller(ds, interval=0.02)
    await poller.start()
    await poller.stop()
    await poller.stop()
    ds.upsert(Endpoint("late", "127.0.0.1", 1))
    assert poller.polled == frozenset()
    with pytest.raises(RuntimeError, match="started once"):
        await poller.start()


def test_rejects_non_positive_interval() -> None:
    with pytest.raises(ValueError, match="positive"):
        MetricsPoller(Datastore(), interval=0)


def test_url_uses_metrics_port_and_brackets_ipv6() -> None:
    poller = MetricsPoller(Datastore())
    assert poller.url(Endpoint("x", "10.0.0.1", 8000)) == "http://10.0.0.1:8000/metrics"
    assert poller.url(Endpoint("x", "fd00::1", 8000, metrics_port=9090)) == "http://[fd00::1]:9090/metrics"
