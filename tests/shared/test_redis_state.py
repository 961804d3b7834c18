"""``RedisSharedState`` against a real Redis-protocol server (``valkey-server`` from the test extras),
with the TTFT scorers of the default preset as the state they share."""

from __future__ import annotations

import asyncio
import logging
import os
import random
import signal
import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator, Callable, Sequence

import pytest
import redis.asyncio as redis
from prometheus_client import CollectorRegistry

from epp._util.clock import WallClock
from epp.config import load_scheduler
from epp.datastore import EndpointMetrics, EndpointState
from epp.request import LLMRequest, RequestKind
from epp.scheduling.plugins.scorers.ttft_predictor import TTFTPredictorScorer
from epp.config.presets import DEFAULT_PRESET
from epp.scheduling.scheduler import Scheduler
from epp.scheduling.ttft.ledger import NO_REMOTE
from epp.shared import PeerExport, participants
from epp.shared.redis_state import RedisSharedState
from tests.conftest import make_state, wait_for
from tests.datalayer.test_shared_prefix import RedisServer, server  # noqa: F401 (fixture)

pytestmark = pytest.mark.e2e
PREFIX = "test:shared"


class Replica:
    """One picker replica's scheduler (default preset, wall clock) and its shared-state exchange."""

    def __init__(self, url: str, name: str, seed: int, **kw: float) -> None:
        self.clock = WallClock()
        self.scheduler: Scheduler = load_scheduler(DEFAULT_PRESET, clock=self.clock, rng=random.Random(seed))
        self.scorer = next(p for p in self.scheduler.plugins if isinstance(p, TTFTPredictorScorer))
        self.registry = CollectorRegistry()
        self.shared = RedisSharedState(url, participants(self.scheduler.plugins), self.clock, replica=name,
                                       prefix=PREFIX, registry=self.registry, **kw)  # type: ignore[arg-type]
        self.endpoints = [make_state(f"e{i}", address=f"10.0.0.{i + 1}",
                                     metrics=EndpointMetrics(scraped_at=self.clock.now(), block_size=16,
                                                             num_gpu_blocks=29202)) for i in range(2)]  # fmt: skip

    def route(self, rid: str, tokens: int, endpoint: EndpointState | None = None) -> str:
        """Schedule a request (on ``endpoint`` only, if given): it is booked in this replica's ledger."""
        request = LLMRequest(request_id=rid, kind=RequestKind.COMPLETIONS, model="m", max_tokens=64, stream=True,
                             prompt_token_ids=[random.Random(rid).randrange(1 << 30) for _ in range(tokens)])
        return self.scheduler.schedule(request, [endpoint] if endpoint else self.endpoints).endpoints[0].name

    def remote(self, endpoint: str) -> int:
        """Requests the other replicas have in flight on ``endpoint``, as this one sees them."""
        ledger = self.scorer.ledgers.get(endpoint)
        return ledger.remote.requests if ledger is not None else 0

    def gauge(self, name: str) -> float | None:
        return self.registry.get_sample_value(name)


@pytest.fixture
async def replicas(server: RedisServer) -> AsyncIterator[Callable[..., Replica]]:  # noqa: F811
    made: list[Replica] = []

    def new(name: str, seed: int = 0, **kw: float) -> Replica:
        replica = Replica(server.url, name, seed, **kw)
        for e in replica.endpoints:
            replica.route(f"{name}-warm-{e.name}", 8, e)  # both endpoints have ledgers
            replica.scheduler.response_complete(LLMRequest(request_id=f"{name}-warm-{e.name}", kind=RequestKind.COMPLETIONS, model="m"), e, {})
        made.append(replica)
        return replica

    yield new
    for replica in made:
        await replica.shared.stop()


async def test_two_replicas_see_each_others_ledger_within_one_period(replicas: Callable[..., Replica]) -> None:
    # A long period: the test drives the rounds itself (each ``exchange`` is what one period does).
    a, b = replicas("a", period=60.0, ttl=300.0), replicas("b", seed=1, period=60.0, ttl=300.0)
    await a.shared.start()
    await b.shared.start()
    await wait_for(lambda: a.shared.connected is True and b.shared.connected is True, what="first round")
    await a.shared.exchange()  # a discovers b (b's first round discovered a)
    await b.shared.exchange()
    assert a.shared.peers == ["b"] and b.shared.peers == ["a"]
    chosen = a.route("a1", 20_000)
    assert b.remote(chosen) == 0
    await a.shared.exchange()  # one period: a publishes, b reads
    await b.shared.exchange()
    assert b.remote(chosen) == 1
    assert b.scorer.ledgers[chosen].remote.seconds > 0
    other = next(e for e in b.endpoints if e.name != chosen)
    assert b.route("b1", 2_000) == other.name  # b steers around a's prefill
    await b.shared.exchange()
    await a.shared.exchange()
    assert a.remote(other.name) == 1 and a.remote(chosen) == 0  # a sees b's request; never its own echoed
    assert b.gauge("epp_shared_state_peers") == 1 and b.gauge("epp_shared_state_connected") == 1


async def test_running_replicas_share_in_the_background(replicas: Callable[..., Replica]) -> None:
    a, b = replicas("a", period=0.02), replicas("b", seed=1, period=0.02)
    await a.shared.start()
    await b.shared.start()
    chosen = a.route("a1", 20_000)
    await wait_for(lambda: b.remote(chosen) == 1, timeout=10, what="b sees a's request")
    a.scheduler.response_complete(LLMRequest(request_id="a1", kind=RequestKind.COMPLETIONS, model="m"),
                                  next(e for e in a.endpoints if e.name == chosen), {})  # fmt: skip
    await wait_for(lambda: b.remote(chosen) == 0, timeout=10, what="b sees it end")
    await a.shared.stop()  # a clean stop withdraws a's state at once
    await wait_for(lambda: b.shared.peers == [], timeout=5, what="b drops a")


async def test_bookings_and_observations_reach_the_others_without_waiting_for_a_period(
    replicas: Callable[..., Replica]
) -> None:
    # A period far longer than the test: whatever b hears comes through the published events.
    a, b = replicas("a", period=60.0, ttl=300.0), replicas("b", seed=1, period=60.0, ttl=300.0)
    await a.shared.start()
    await b.shared.start()
    await wait_for(lambda: a.shared.connected is True and b.shared.connected is True, what="first round")
    await asyncio.sleep(0.2)  # both subscribed
    chosen = a.route("a1", 20_000)
    await wait_for(lambda: b.remote(chosen) == 1, timeout=2, what="b hears of a's booking")
    (start, seconds), = b.scorer.ledgers[chosen].remote.intervals
    assert seconds > 0 and abs(start - a.scorer.ledgers[chosen].own_intervals()[0][0]) < 0.5
    assert a.remote(chosen) == 0  # its own events are not echoed back
    learned = b.scorer.learner[chosen].observations
    endpoint = next(e for e in a.endpoints if e.name == chosen)
    a.scheduler.response_started(LLMRequest(request_id="a1", kind=RequestKind.COMPLETIONS, model="m", stream=True),
                                 endpoint)  # fmt: skip
    await wait_for(lambda: len(b.scorer.learner[chosen]._foreign) == 1, timeout=2, what="b hears the first token")
    await asyncio.sleep(0.01)  # a later iteration than a1's first token
    a.route("a2", 100, endpoint)
    a.scheduler.response_started(LLMRequest(request_id="a2", kind=RequestKind.COMPLETIONS, model="m", stream=True),
                                 endpoint)  # fmt: skip  # closes a1's observation: a learns, and tells b
    await wait_for(lambda: b.scorer.learner[chosen].observations == learned + 1, timeout=2, what="b learns")
    assert a.scorer.learner[chosen].observations == learned + 1


async def test_losing_redis_falls_back_to_local_state_warns_once_and_recovers(
    server: RedisServer, replicas: Callable[..., Replica], caplog: pytest.LogCaptureFixture  # noqa: F811
) -> None:
    caplog.set_level(logging.INFO, logger="epp.shared.redis_state")
    a = replicas("a", period=0.02, ttl=0.5, retry_interval=0.05)
    b = replicas("b", seed=1, period=0.02, ttl=0.5, retry_interval=0.05)
    await a.shared.start()
    await b.shared.start()
    chosen = a.route("a1", 20_000)
    await wait_for(lambda: b.remote(chosen) == 1, timeout=10, what="b sees a's request")

    server.kill()
    await wait_for(lambda: b.shared.connected is False, timeout=10, what="b notices")
    assert b.gauge("epp_shared_state_connected") == 0
    await wait_for(lambda: b.remote(chosen) == 0, timeout=10, what="a's state expires")  # then local state only
    assert b.scorer.ledgers[chosen].remote is NO_REMOTE
    await asyncio.sleep(0.3)  # several failed retries
    assert (b.gauge("epp_shared_state_errors_total") or 0) >= 2
    assert b.route("b1", 100)  # picks keep working without Redis
    down = [r for r in caplog.records if "unreachable" in r.getMessage()]
    assert len(down) == 2 and {r.levelno for r in down} == {logging.WARNING}  # one per replica, not per retry

    server.start()  # empty: the replicas re-register themselves
    await wait_for(lambda: b.shared.connected is True and b.remote(chosen) == 1, timeout=10, what="recovery")
    assert b.gauge("epp_shared_state_connected") == 1
    assert len([r for r in caplog.records if "is back" in r.getMessage()]) == 2


REPLICA_SCRIPT = textwrap.dedent("""
    import asyncio, sys
    from tests.shared.test_redis_state import Replica

    async def main() -> None:
        replica = Replica(sys.argv[1], "doomed", 3, period=0.02, ttl=0.4)
        replica.route("d1", 20_000, replica.endpoints[0])
        await replica.shared.start()
        print("ready", flush=True)
        await asyncio.sleep(600)

    asyncio.run(main())
""")


async def test_a_killed_replicas_state_expires_after_the_ttl(
    server: RedisServer, replicas: Callable[..., Replica]  # noqa: F811
) -> None:
    b = replicas("b", seed=1, period=0.02, ttl=0.4)
    await b.shared.start()
    proc = await asyncio.create_subprocess_exec(sys.executable, "-c", REPLICA_SCRIPT, server.url,
                                                stdout=subprocess.DEVNULL,
                                                env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})  # fmt: skip
    client = redis.Redis.from_url(server.url)
    try:
        await wait_for(lambda: b.remote("e0") == 1, timeout=30, what="b sees the doomed replica")
        proc.send_signal(signal.SIGKILL)  # no clean stop: its key stays until the ttl
        await proc.wait()
        assert await client.exists(f"{PREFIX}:replica:doomed")
        await wait_for(lambda: b.remote("e0") == 0 and b.shared.peers == [], timeout=10, what="expiry")
        assert not await client.exists(f"{PREFIX}:replica:doomed")

        async def removed() -> bool:  # the round after its expiry takes it out of the member set
            return await client.smembers(f"{PREFIX}:replicas") == {b"b"}

        await wait_for(removed, timeout=5, what="member set cleaned")
    finally:
        await client.aclose()  # type: ignore[attr-defined]  # types-redis 4.6 predates aclose
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def test_a_failing_plugin_is_logged_once_and_the_exchange_goes_on(
    server: RedisServer, caplog: pytest.LogCaptureFixture  # noqa: F811
) -> None:
    class Flaky:
        def __init__(self) -> None:
            self.broken = True
            self.imports = 0

        def export_shared(self, now: float) -> dict[str, object]:
            if self.broken:
                raise RuntimeError("bug")
            return {}

        def import_shared(self, peers: Sequence[PeerExport], now: float) -> None:
            self.imports += 1

    flaky = Flaky()
    shared = RedisSharedState(server.url, {"flaky": flaky}, WallClock(), prefix=PREFIX, period=0.02,
                              retry_interval=0.02)  # fmt: skip
    await shared.start()
    try:
        await asyncio.sleep(0.2)  # several failed rounds
        assert len([r for r in caplog.records if "exchange failed" in r.getMessage()]) == 1
        flaky.broken = False
        await wait_for(lambda: flaky.imports > 2, timeout=10, what="exchanges resume")
    finally:
        await shared.stop()
