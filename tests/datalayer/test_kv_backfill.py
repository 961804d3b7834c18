"""Joining running engines: per-endpoint events ports, and backfill from vLLM's replay socket (real ZMQ,
the simulator's publisher in-process) so blocks cached before the subscription are known."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import pytest
from prometheus_client import CollectorRegistry

from epp.contracts.kv_events import FeedState
from epp._util.clock import VirtualClock
from epp.datastore import Endpoint
from epp.engine.block_pool import BlockStored
from epp.contracts.datalayer import SubscriberMode
from epp.datalayer.kv_events import KVEventSubscriber
from epp.scheduling.prefix.index import BlockIndex
from epp.scheduling.prefix.precise import PreciseIndex
from epp.kvevents.encode import WireFormat
from epp.sim.kv_events import KVEventPublisher
from tests.datalayer.test_kv_events import SIM, completion, hashes, until
from tests.sim.helpers import MODEL
from tests.test_app import free_port

pytestmark = pytest.mark.e2e


def test_events_ports_follow_the_label_and_the_data_parallel_rank() -> None:
    sub = KVEventSubscriber(PreciseIndex(VirtualClock(), BlockIndex(10)), port=5557, replay_port=5558)
    plain = Endpoint("10.0.0.1:8000", "10.0.0.1", 8000)
    labelled = Endpoint("10.0.0.1:8001", "10.0.0.1", 8001, labels={"epp/kv-events-port": "6000"})
    ranked = Endpoint("pod-a-rank-2", "10.0.0.2", 8002)
    assert [sub.events_port(e) for e in (plain, labelled, ranked)] == [5557, 6000, 5559]
    assert [sub.replay_port(e) for e in (plain, labelled, ranked)] == [5558, 6001, 5560]
    no_offset = KVEventSubscriber(PreciseIndex(VirtualClock(), BlockIndex(10)), port=5557, rank_offset=False)
    assert (no_offset.events_port(ranked), no_offset.replay_port(ranked)) == (5557, None)
    bad = Endpoint("x", "10.0.0.3", 8000, labels={"epp/kv-events-port": "not-a-port"})
    assert sub.events_port(bad) == 5557


def ingested(registry: CollectorRegistry) -> float:
    """Batches the subscriber handed to the index, whatever their sequence check said."""
    return sum(
        s.value for family in registry.collect() if family.name == "epp_kv_events_batches"
        for s in family.samples if s.name.endswith("_total")
    )  # fmt: skip


def stored(prompt: str) -> tuple[BlockStored, list[int]]:
    """A store as a real vLLM reports it — engine hashes of its own (sha256), not epp's keys — and the
    keys epp computes for the prompt."""
    h = hashes(completion(prompt))
    tokens = tuple(SIM.encode(prompt)[: 16 * len(h)])  # full blocks only, as an engine reports them
    return BlockStored(tuple(k ^ 0x5EED for k in h), None, tokens, 16, None), h


class Engine:
    """The simulator's vLLM publisher (PUB + replay ROUTER) on free ports, its replay socket served by
    a task as the simulator's server does."""

    def __init__(self, wire: WireFormat = WireFormat.VLLM) -> None:
        self.port, self.replay = free_port(), free_port()
        self.publisher = KVEventPublisher(
            f"tcp://*:{self.port}", "", lora_ids={}, wall_time=lambda: 1.0, wire=wire,
            replay_endpoint=f"tcp://*:{self.replay}",
        )  # fmt: skip
        self.task = asyncio.get_running_loop().create_task(self._serve())

    async def _serve(self) -> None:
        while True:
            self.publisher.serve_replay()
            await asyncio.sleep(0.01)

    async def close(self) -> None:
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.task
        self.publisher.close()


@contextlib.asynccontextmanager
async def subscribed(
    engine: Engine, replay_port: int | None = None, replay_timeout: float = 2.0
) -> AsyncIterator[tuple[PreciseIndex, CollectorRegistry]]:
    """A subscriber that connects to ``engine`` (its replay socket unless ``replay_port`` names another)
    for endpoint ``e``, stopped on exit: every backfill test joins the engine the same way, only what was
    published before differs."""
    index = PreciseIndex(VirtualClock(), BlockIndex(100))
    registry = CollectorRegistry()
    sub = KVEventSubscriber(index, SubscriberMode.CONNECT, port=engine.port, replay_port=replay_port or engine.replay,
                            replay_timeout=replay_timeout, registry=registry)  # fmt: skip
    sub.endpoint_added(Endpoint("e", "127.0.0.1", 8000))
    await sub.start()
    try:
        yield index, registry
    finally:
        await sub.stop()


@pytest.fixture
async def engine() -> AsyncIterator[Engine]:
    e = Engine()
    yield e
    await e.close()


async def test_a_late_subscriber_backfills_what_the_engine_cached_before_it_joined(engine: Engine) -> None:
    early, early_keys = stored("cached before epp started " * 10)
    engine.publisher.publish([early])  # nobody subscribed: only the replay buffer has it
    engine.publisher.publish([stored("another early prompt " * 12)[0]])
    async with subscribed(engine) as (index, registry):
        await until(lambda: ingested(registry) >= 2, "the backfill")
        index.routed("e", "r0", early_keys, MODEL)  # the first pick names the model: the backfill is keyed
        assert index.match(early_keys, ["e"]) == [len(early_keys)]
        assert index.feed_state("e") is FeedState.LIVE and not index.young("e")  # seen from batch 0
        later, later_keys = stored("published after the subscription " * 8)
        for _ in range(100):  # live batches after the backfill, none applied twice
            engine.publisher.publish([later])
            await asyncio.sleep(0.02)
            if index.match(later_keys, ["e"])[0]:
                break
        assert index.match(later_keys, ["e"]) == [len(later_keys)]
        assert registry.get_sample_value("epp_kv_events_batches_total", {"result": "restart"}) is None
        assert registry.get_sample_value("epp_kv_events_batches_total", {"result": "gap"}) is None


async def test_a_busy_engines_first_live_batch_waits_for_the_backfill(engine: Engine) -> None:
    """Live batches may reach the subscriber before it notices the connection: what the engine sent
    before them is still backfilled first, so the view starts at batch 0, not at the first live one."""
    early, early_keys = stored("cached while epp was down " * 10)
    engine.publisher.publish([early])
    busy, _ = stored("traffic that keeps the engine publishing " * 6)

    async def traffic() -> None:
        while True:
            engine.publisher.publish([busy])
            await asyncio.sleep(0.005)

    publishing = asyncio.get_running_loop().create_task(traffic())
    try:
        async with subscribed(engine) as (index, registry):
            await until(lambda: (registry.get_sample_value("epp_kv_events_batches_total", {"result": "in-order"}) or 0) > 20,
                        "live batches after the backfill")  # fmt: skip
            index.routed("e", "r", early_keys, MODEL)
            assert index.match(early_keys, ["e"]) == [len(early_keys)] and not index.young("e")
            for result in ("baseline", "gap", "restart"):
                assert registry.get_sample_value("epp_kv_events_batches_total", {"result": result}) is None
    finally:
        publishing.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await publishing


async def test_without_a_replay_socket_the_first_batch_is_a_baseline_and_the_view_is_young() -> None:
    engine = Engine()
    engine.publisher.publish([stored("missed " * 20)[0]])  # seq 0 goes by unseen
    silent_replay = free_port()  # nothing answers there: given up on after the timeout
    try:
        async with subscribed(engine, replay_port=silent_replay, replay_timeout=0.2) as (index, registry):
            seen, keys = stored("seen " * 30)
            for _ in range(100):
                engine.publisher.publish([seen])
                await asyncio.sleep(0.05)
                if ingested(registry):
                    break
            index.routed("e", "r", keys, MODEL)
            assert index.match(keys, ["e"]) == [len(keys)]
            assert index.feed_state("e") is FeedState.LIVE and index.young("e")
    finally:
        await engine.close()


async def test_sglangs_replay_replies_without_a_topic_backfill_too() -> None:
    engine = Engine(WireFormat.SGLANG)
    early, keys = stored("sglang cached this first " * 10)
    engine.publisher.publish([early])
    try:
        async with subscribed(engine) as (index, registry):
            await until(lambda: ingested(registry) > 0, "the backfill")
            index.routed("e", "r", keys, MODEL)
            assert index.match(keys, ["e"]) == [len(keys)]
    finally:
        await engine.close()
