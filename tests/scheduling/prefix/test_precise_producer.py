"""``precise-prefix-cache-producer`` in a config, read by ``prefix-cache-scorer`` as in llm-d."""

from __future__ import annotations

import pytest

from epp._util.clock import VirtualClock
from epp.config import load_scheduler_text
from epp.config.decode import ConfigError
from epp.datalayer import DataLayer
from epp.datastore import Datastore, Endpoint, EndpointMetrics
from epp.contracts.kv_events import FeedState, Stored
from epp.request import LLMRequest, RequestKind
from epp.scheduling.plugins.scorers.prefix_cache import PrefixCacheScorer
from epp.scheduling.prefix.precise_producer import PrecisePrefixCacheProducer
from epp.scheduling.prefix.replicated import ReplicatedPrefixIndex
from epp.scheduling.prefix.tokens import prompt_token_ids
from epp.tokenizer.load import load_tokenizer

MODEL = "m"
HEADER = "apiVersion: llm-d.ai/v1alpha1\nkind: EndpointPickerConfig\n"


def config(producer_params: str = "{mode: bind, bindEndpoint: 'tcp://127.0.0.1:0'}") -> str:
    return (
        f"{HEADER}plugins:\n"
        f"- {{type: precise-prefix-cache-producer, name: kv, parameters: {producer_params}}}\n"
        "- {type: prefix-cache-scorer, parameters: {prefixMatchInfoProducerName: kv}}\n"
        "- {type: max-score-picker}\n"
        "schedulingProfiles:\n- name: default\n  plugins:\n"
        "  - {pluginRef: prefix-cache-scorer}\n  - {pluginRef: max-score-picker}\n"
    )


def chat(content: str) -> LLMRequest:
    return LLMRequest("r", RequestKind.CHAT_COMPLETIONS, MODEL, body={"messages": [{"role": "user", "content": content}]})


async def test_the_scorer_reads_engine_reported_blocks_and_picks_record_for_the_fallback() -> None:
    clock = VirtualClock()
    scheduler = load_scheduler_text(config(), clock=clock)
    producer = next(p for p in scheduler.plugins if isinstance(p, PrecisePrefixCacheProducer))
    scorer = next(p for p in scheduler.plugins if isinstance(p, PrefixCacheScorer))
    assert scorer.producer is producer
    assert producer.typed_name.type == "precise-prefix-cache-producer"
    datastore = Datastore(clock)
    scheduler.attach(datastore)
    data = DataLayer(scheduler.data_needs)
    data.attach(datastore)
    for i in range(3):
        datastore.upsert(Endpoint(f"e{i}", "127.0.0.1", 8000 + i))
    await data.start()
    try:
        request = chat("Tell me about prefix caching. " * 6)
        tokens = prompt_token_ids(request, load_tokenizer("sim"))
        full = len(tokens) // 16 * 16
        hashes = producer.prompt_hashes(request, 16, 256)
        producer.precise.ingest("e2", 0, [Stored(tuple(hashes), None, tuple(tokens[:full]), 16, None)], MODEL)
        result = scheduler.schedule(request, list(datastore.endpoints()))
        assert result.endpoints[0].name == "e2"
        assert producer.precise.feed_state("e2") is FeedState.LIVE
        # e2's engine never answers the pick: after eventTimeout the fallback answers for it, and it
        # learned that pick
        clock.advance(5.5)
        assert producer.precise.feed_state("e2") is FeedState.SILENT
        assert producer.index.match(hashes, ["e0", "e1", "e2"]) == [0, 0, len(hashes)]
        datastore.remove("e2")
        assert producer.index.match(hashes, ["e2"]) == [0]
    finally:
        await data.stop()


def test_redis_url_makes_the_index_shared_and_bad_parameters_name_their_key() -> None:
    scheduler = load_scheduler_text(config("{redisUrl: 'redis://127.0.0.1:1/0'}"))
    producer = next(p for p in scheduler.plugins if isinstance(p, PrecisePrefixCacheProducer))
    assert isinstance(producer.index, ReplicatedPrefixIndex) and producer.index.local is producer.precise
    (shared,) = scheduler.data_needs.shared_indexes  # the data layer replicates it through Redis
    assert shared.outbox is producer.index and shared.url == "redis://127.0.0.1:1/0"
    for params, key in (
        ("{mode: both}", "mode"),
        ("{tokenizer: 'nope'}", "tokenizer"),
        ("{eventTimeout: 0}", "eventTimeout"),
        ("{kvEventsPort: 0}", "kvEventsPort"),
        ("{kvEventsReplayPort: 70000}", "kvEventsReplayPort"),
        ("{redisMaxLen: 0}", "redisMaxLen"),
        ("{blockSize: 64}", "blockSize"),
    ):
        with pytest.raises(ConfigError) as err:
            load_scheduler_text(config(params))
        assert key in err.value.path


def test_replay_rank_offset_and_young_window_parameters_reach_the_subscriber_and_index() -> None:
    params = "{kvEventsPort: 6000, kvEventsReplayPort: 6100, kvEventsRankOffset: false, youngViewWindow: 1m}"
    scheduler = load_scheduler_text(config(params))
    producer = next(p for p in scheduler.plugins if isinstance(p, PrecisePrefixCacheProducer))
    (subscriber,) = DataLayer(scheduler.data_needs).subscribers
    ranked = Endpoint("pod-rank-3", "10.0.0.1", 8003)
    assert (subscriber.events_port(ranked), subscriber.replay_port(ranked)) == (6000, 6100)
    assert producer.precise.young_window == 60.0
    (default,) = DataLayer(load_scheduler_text(config("{}")).data_needs).subscribers
    assert (default.events_port(ranked), default.replay_port(ranked)) == (5560, None)


async def test_events_without_a_model_are_keyed_by_the_model_the_engines_metrics_name() -> None:
    """vLLM's empty topic names no model and nothing was routed to e1 yet: its scraped metrics say
    which model it serves, so its reported blocks count at the first lookup, not only after a pick."""
    clock = VirtualClock()
    scheduler = load_scheduler_text(config(), clock=clock)
    producer = next(p for p in scheduler.plugins if isinstance(p, PrecisePrefixCacheProducer))
    datastore = Datastore(clock)
    scheduler.attach(datastore)
    data = DataLayer(scheduler.data_needs)
    data.attach(datastore)
    for i in range(2):
        datastore.upsert(Endpoint(f"e{i}", "127.0.0.1", 8000 + i))
        datastore.update_metrics(f"e{i}", EndpointMetrics(clock.now(), models=frozenset({MODEL})))
    await data.start()
    try:
        request = chat("A system prompt every request shares. " * 6)
        tokens = prompt_token_ids(request, load_tokenizer("sim"))
        full = len(tokens) // 16 * 16
        engine_hashes = tuple(h ^ 0x5EED for h in producer.prompt_hashes(request, 16, 256))  # sha256 in vLLM
        producer.precise.ingest("e1", 0, [Stored(engine_hashes, None, tuple(tokens[:full]), 16, None)], None)
        assert producer.precise.held_blocks("e1") == 0 and producer.precise.unseeded == {"e1"}
        result = scheduler.schedule(request, list(datastore.endpoints()))
        assert result.endpoints[0].name == "e1"
        assert producer.precise.feed_state("e1") is FeedState.LIVE and not producer.precise.unseeded
    finally:
        await data.stop()
