"""Key agreement over real ZMQ: ``epp sim`` engines whose blocks are keyed like epp's prompts are
trusted once a routed prompt shows up in their events; an engine whose keys never agree (here: it
seeds its blocks with another model name, as a real engine's token ids differ from the ``sim``
tokenizer's) is ``KEYS_MISMATCH`` and matched in the approximate fallback."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

import aiohttp
import msgpack
import pytest
import zmq
import zmq.asyncio
from prometheus_client import CollectorRegistry

from epp._util.clock import VirtualClock
from epp.config import load_scheduler_text
from epp.datalayer import DataLayer
from epp.datastore import Datastore, Endpoint, EndpointState
from epp.engine.block_pool import BlockStored
from epp.request import LLMRequest, RequestKind
from epp.contracts.kv_events import FeedState
from epp.scheduling.prefix.precise_producer import PrecisePrefixCacheProducer
from epp.tokenizer.load import load_tokenizer
from epp.config.presets import PRESETS
from epp.scheduling.scheduler import Scheduler
from epp.kvevents.encode import encode_event
from tests.datalayer.test_kv_events import until
from tests.sim.conftest import LLM_D_TOPIC, run_sim
from tests.sim.helpers import MODEL, post

pytestmark = pytest.mark.e2e

def default_with(producer: str) -> str:
    """The ``default`` preset with its producer's transport settings replaced by ``producer``."""
    shipped = "mode: connect, kvEventsPort: 5557, tokenizer: auto"
    assert shipped in PRESETS["default"]
    return PRESETS["default"].replace(shipped, producer)


def completion(request_id: str, prompt: str) -> LLMRequest:
    return LLMRequest(request_id, RequestKind.COMPLETIONS, MODEL, body={"model": MODEL, "prompt": prompt, "max_tokens": 1})


def producer_of(scheduler: Scheduler) -> PrecisePrefixCacheProducer:
    return next(p for p in scheduler.plugins if isinstance(p, PrecisePrefixCacheProducer))


async def route(scheduler: Scheduler, state: EndpointState, request: LLMRequest, http: aiohttp.ClientSession) -> None:
    """What the gateway does with a pick: schedule (only ``state`` is a candidate), forward to the
    engine, report the first bytes and the end."""
    assert scheduler.schedule(request, [state]).endpoints[0] is state
    status, _ = await post(http, f"http://{state.endpoint.hostport}/v1/completions", request.body)
    assert status == 200
    scheduler.response_started(request, state)
    scheduler.response_complete(request, state, {})


async def test_sim_events_through_real_zmq_are_trusted_and_foreign_keys_are_not(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = VirtualClock()
    scheduler = load_scheduler_text(
        # resyncWindow 0: batches an engine sends before its PUB reaches the SUB are lost, a gap
        default_with("mode: bind, bindEndpoint: 'tcp://127.0.0.1:0', eventTimeout: 5s, resyncWindow: 0"), clock=clock
    )
    producer = producer_of(scheduler)
    registry = CollectorRegistry()
    data = DataLayer(scheduler.data_needs)
    data.register_metrics(registry)
    datastore = Datastore(clock)
    scheduler.attach(datastore)
    data.attach(datastore)
    await data.start()
    try:
        bound = data.subscribers[0].bound_endpoint
        assert bound is not None
        args = ("--kv-events-endpoint", bound, "--kv-events-topic", LLM_D_TOPIC, "--kv-cache-blocks", "256", "--time-scale", "0")
        # the second engine's topic names another model than the one clients ask for, so its blocks
        # are keyed under another root: like a real engine's token ids against the sim tokenizer
        foreign = ("--served-model-name", "other-name", "--served-model-name", MODEL)
        with run_sim(*args) as good, run_sim(*args, *foreign) as bad, caplog.at_level(logging.WARNING):
            for name, sim in (("good", good), ("bad", bad)):
                datastore.upsert(Endpoint(name, "127.0.0.1", sim.port))
            states = {s.name: s for s in datastore.endpoints()}
            async with aiohttp.ClientSession() as http:
                for name, sim in (("good", good), ("bad", bad)):  # until each engine's PUB reached the SUB
                    for attempt in range(100):
                        status, _ = await post(http, f"{sim.url}/v1/completions",
                                               {"model": MODEL, "prompt": f"warm-up {attempt:03d} ".ljust(64, "."), "max_tokens": 1})  # fmt: skip
                        assert status == 200
                        await asyncio.sleep(0.02)
                        if producer.precise.held_blocks(name):
                            break
                    assert producer.precise.feed_state(name) is FeedState.UNVERIFIED  # stores, none of epp's yet
                assert not producer.view_is_exact("good")

                await route(scheduler, states["good"], completion("g1", "A prompt epp routed itself. " * 8), http)
                await until(lambda: producer.precise.feed_state("good") is FeedState.LIVE, "the routed prompt's blocks")
                assert producer.view_is_exact("good")
                assert registry.get_sample_value("epp_kv_events_feed_state", {"endpoint": "good", "state": "live"}) == 1

                for i in range(8):  # eight routed prompts whose blocks the engine reports under other keys
                    stores = producer.precise.held_blocks("bad")
                    await route(scheduler, states["bad"], completion(f"b{i}", f"Prompt {i} for the other engine. " * 8), http)
                    await until(lambda: producer.precise.held_blocks("bad") > stores, "the engine's stores")  # noqa: B023
                    clock.advance(5.1)  # past eventTimeout after the first token
                assert producer.precise.feed_state("bad") is FeedState.KEYS_MISMATCH
                assert not producer.view_is_exact("bad")
                assert registry.get_sample_value("epp_kv_events_feed_state", {"endpoint": "bad", "state": "keys-mismatch"}) == 1
                # matched in the approximate fallback: the routed prompt is a hit there, not a blind 0
                again = completion("b-again", "Prompt 7 for the other engine. " * 8)
                info, hits = producer.match({}, again, [states["bad"]])
                assert hits == [info.total] and info.total > 0
                warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and "KV events" in r.getMessage()]
                assert len(warnings) == 1 and "`tokenizer`" in warnings[0] and "bad" in warnings[0]
    finally:
        await data.stop()


@pytest.fixture
async def pub_ctx() -> AsyncIterator[zmq.asyncio.Context]:
    ctx = zmq.asyncio.Context()
    yield ctx
    ctx.destroy(linger=0)


async def test_connect_mode_takes_vllms_default_publisher_with_an_empty_topic(pub_ctx: zmq.asyncio.Context) -> None:
    """vLLM started with only ``{"enable_kv_cache_events": true, "publisher": "zmq"}`` binds
    ``tcp://*:5557`` and publishes with topic ``""``: the connected subscriber takes it, and root
    blocks are seeded with the model epp routes there."""
    pub = pub_ctx.socket(zmq.PUB)
    pub.setsockopt(zmq.LINGER, 0)
    port = pub.bind_to_random_port("tcp://127.0.0.1")
    clock = VirtualClock()
    scheduler = load_scheduler_text(default_with(f"kvEventsPort: {port}, resyncWindow: 0"), clock=clock)
    producer = producer_of(scheduler)
    data = DataLayer(scheduler.data_needs)
    datastore = Datastore(clock)
    scheduler.attach(datastore)
    data.attach(datastore)
    datastore.upsert(Endpoint("vllm", "127.0.0.1", 8000))
    await data.start()
    try:
        await until(lambda: producer.precise.feed_state("vllm") is FeedState.NO_EVENTS, "the TCP connection")
        state = next(iter(datastore.endpoints()))
        request = completion("r1", "Routed to a vLLM with default settings. " * 4)
        scheduler.schedule(request, [state])  # routed: the model is learned, the prompt probed
        tokens = load_tokenizer("sim").encode(request.body["prompt"])
        full = len(tokens) // 16 * 16
        stored = BlockStored(tuple(range(1, full // 16 + 1)), None, tuple(tokens[:full]), 16, None)  # sha-like hashes
        payload = msgpack.packb([1.0, [encode_event(stored, {})]])
        for seq in range(100):  # a new subscription drops messages until it reaches the publisher
            await pub.send_multipart([b"", seq.to_bytes(8, "big"), payload])
            await asyncio.sleep(0.02)
            if producer.precise.held_blocks("vllm"):
                break
        assert producer.precise.feed_state("vllm") is FeedState.LIVE
        info, hits = producer.match({}, completion("r2", request.body["prompt"]), [state])
        assert hits == [info.total] == [full // 16]
    finally:
        pub.close(linger=0)
        await data.stop()
