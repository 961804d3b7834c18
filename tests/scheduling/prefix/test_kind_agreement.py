"""Key agreement per prompt kind: a tokenizer right for completions and wrong for chat keeps the
completions on the engine's view and matches only chat in the fallback — never zeroes either."""

from __future__ import annotations

import json
from pathlib import Path

from prometheus_client import CollectorRegistry

from epp.contracts.kv_events import CHAT, COMPLETION, FeedState, KeyAgreement
from epp._util.clock import VirtualClock
from epp.config import load_scheduler_text
from epp.datalayer import DataLayer
from epp.datastore import Datastore, Endpoint
from epp.kvevents.decode import decode_message
from epp.request import LLMRequest, RequestKind
from epp.scheduling.prefix.index import BlockIndex
from epp.scheduling.prefix.precise import PreciseIndex
from epp.scheduling.prefix.precise_producer import PrecisePrefixCacheProducer
from tests.kvevents.captures import frames, messages
from tests.scheduling.prefix.test_precise_index import MODEL, Feed, keys, stored, tokens

CAPTURES = Path(__file__).parents[2] / "data" / "vllm-0.32-cpu" / "captures"
TINY = Path(__file__).parents[2] / "data" / "vllm-0.32-cpu" / "tiny-llama"


def test_a_half_right_tokenizer_zeroes_neither_kind() -> None:
    clock = VirtualClock()
    index = PreciseIndex(clock, BlockIndex(1000), event_timeout=5.0, mismatch_after=3)
    feed = Feed(index, "e")
    completion = tokens(1, 3)
    index.routed("e", "c1", keys(completion), MODEL, COMPLETION)
    feed.send(stored(completion))  # the engine stored exactly epp's completion keys
    assert index.key_agreement("e", COMPLETION) is KeyAgreement.AGREED
    for i in range(3):  # chat prompts epp hashed one way, the engine tokenized another
        epp_chat = tokens(10 + i, 2)
        index.routed("e", f"chat{i}", keys(epp_chat), MODEL, CHAT)
        index.add("e", keys(epp_chat))  # the fallback learns the pick
        index.responded(f"chat{i}")
        feed.send(stored(tokens(20 + i, 2)))  # what the engine really cached for it
        clock.advance(5.1)
    assert index.key_agreement("e", CHAT) is KeyAgreement.MISMATCH
    assert index.feed_state("e", CHAT) is FeedState.KEYS_MISMATCH
    assert index.feed_state("e", COMPLETION) is FeedState.LIVE
    assert index.feed_state("e") is FeedState.LIVE  # the summary: some kind agrees
    assert index.match(keys(completion), ["e"], COMPLETION) == [3]  # engine view
    assert index.match(keys(tokens(12, 2)), ["e"], CHAT) == [2]  # learned fallback, not a blind 0
    assert index.match(keys(tokens(12, 2)), ["e"], COMPLETION) == [0]  # the engine never cached those keys
    # a later chat prompt whose keys the engine does report lifts the mismatch for chat only
    right = tokens(30, 2)
    index.routed("e", "chat-ok", keys(right), MODEL, CHAT)
    feed.send(stored(right))
    assert index.key_agreement("e", CHAT) is KeyAgreement.AGREED


def _request(kind: RequestKind, body: dict) -> LLMRequest:
    return LLMRequest(body.get("model", "m"), kind, body["model"], target_model=body["model"], body=body)


async def test_engine_captures_agree_with_the_auto_tokenizer_for_both_kinds() -> None:
    """The real engine's events for a chat and a completion request (captured) hold exactly the blocks
    epp's default producer hashes for those requests with the served model's tokenizer."""
    config = (
        "apiVersion: llm-d.ai/v1alpha1\nkind: EndpointPickerConfig\nplugins:\n"
        "- {type: precise-prefix-cache-producer, parameters: {mode: connect, kvEventsPort: 5557}}\n"
        "- {type: prefix-cache-scorer, parameters: {prefixMatchInfoProducerName: precise-prefix-cache-producer}}\n"
    )
    clock = VirtualClock()
    scheduler = load_scheduler_text(config, clock=clock)
    producer = next(p for p in scheduler.plugins if isinstance(p, PrecisePrefixCacheProducer))
    datastore = Datastore(clock)
    scheduler.attach(datastore)
    data = DataLayer(scheduler.data_needs)  # not started: only its feed-state series are read
    data.attach(datastore)
    datastore.upsert(Endpoint("vllm", "127.0.0.1", 8000))
    datastore.upsert(Endpoint("other", "127.0.0.2", 8000))
    served = str(TINY)  # vLLM without --served-model-name: the model's name is its folder
    requests = {}
    for kind, name in ((RequestKind.COMPLETIONS, "req_completion.json"), (RequestKind.CHAT_COMPLETIONS, "req_chat.json")):
        body = {**json.loads((CAPTURES / name).read_text()), "model": served}
        requests[kind] = _request(kind, body)
    for message in messages("vllm_events1"):  # seq 0: the completion's blocks, 1: the chat's, 2: its output
        batch = decode_message(frames(message))
        producer.precise.ingest("vllm", batch.seq, batch.events, served)
    for request in requests.values():
        hashes = producer.prompt_hashes(request, 128, 64)  # the engine's block size (CPU default)
        assert len(hashes) == 5  # 644 and 660 tokens: five full 128-token blocks each
        assert producer.precise.match(hashes, ["vllm", "other"], producer._kind) == [5, 0]
    assert producer.precise.key_agreement("vllm", CHAT) is KeyAgreement.AGREED
    assert producer.precise.key_agreement("vllm", COMPLETION) is KeyAgreement.AGREED
    registry = CollectorRegistry()
    data.register_metrics(registry)
    assert registry.get_sample_value("epp_kv_events_key_agreement", {"endpoint": "vllm", "kind": "chat", "state": "agreed"}) == 1
