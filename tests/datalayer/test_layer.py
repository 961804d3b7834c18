"""``DataLayer``: what a config's plugins ask for is opened by the data layer, not by the plugins."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry

from epp._util.clock import VirtualClock
from epp.config import load_scheduler_text
from epp.contracts.datalayer import SubscriberMode
from epp.datalayer import DataLayer
from epp.datastore import Datastore, Endpoint
from epp.scheduling.framework import MembershipListener
from epp.scheduling.prefix.precise_producer import PrecisePrefixCacheProducer
from epp.scheduling.prefix.replicated import ReplicatedPrefixIndex

HEADER = "apiVersion: llm-d.ai/v1alpha1\nkind: EndpointPickerConfig\n"


def config(params: str) -> str:
    return (
        f"{HEADER}plugins:\n- {{type: precise-prefix-cache-producer, name: kv, parameters: {params}}}\n"
        "- {type: prefix-cache-scorer, parameters: {prefixMatchInfoProducerName: kv}}\n"
    )


def test_a_precise_producer_records_its_feeds_and_owns_no_io() -> None:
    scheduler = load_scheduler_text(config("{mode: bind, bindEndpoint: 'tcp://127.0.0.1:0', redisUrl: 'redis://127.0.0.1:1/0'}"))
    producer = next(p for p in scheduler.plugins if isinstance(p, PrecisePrefixCacheProducer))
    (feed,) = scheduler.data_needs.kv_event_feeds
    (shared,) = scheduler.data_needs.shared_indexes
    assert feed.view is producer.precise and feed.mode is SubscriberMode.BIND
    assert isinstance(producer.index, ReplicatedPrefixIndex) and shared.outbox is producer.index
    assert not any(hasattr(producer, name) for name in ("start", "stop", "subscriber", "register_metrics"))
    assert producer in scheduler.membership_listeners and isinstance(producer, MembershipListener)
    data = DataLayer(scheduler.data_needs)
    assert len(data.subscribers) == 1 and len(data.replicators) == 1
    assert data.subscribers[0].mode is SubscriberMode.BIND


async def test_start_attach_export_and_stop_in_reverse() -> None:
    clock = VirtualClock()
    scheduler = load_scheduler_text(config("{mode: bind, bindEndpoint: 'tcp://127.0.0.1:0'}"), clock=clock)
    data = DataLayer(scheduler.data_needs)
    registry = CollectorRegistry()
    data.register_metrics(registry)
    datastore = Datastore(clock)
    datastore.upsert(Endpoint("e1", "127.0.0.1", 8000))
    data.attach(datastore)  # endpoints known already are replayed to the subscriber
    async with data:
        assert data.subscribers[0].bound_endpoint is not None
        assert registry.get_sample_value("epp_kv_events_feed_state", {"endpoint": "e1", "state": "no-events"}) == 1
    await data.stop()  # stopped already: a no-op
    with pytest.raises(RuntimeError, match="stopped"):
        await data.subscribers[0].start()


async def test_a_part_that_fails_to_start_stops_the_ones_before_it() -> None:
    bind = "{mode: bind, bindEndpoint: 'tcp://127.0.0.1:0'}"
    scheduler = load_scheduler_text(
        f"{HEADER}plugins:\n- {{type: precise-prefix-cache-producer, name: a, parameters: {bind}}}\n"
        f"- {{type: precise-prefix-cache-producer, name: b, parameters: {bind}}}\n"
        "- {type: prefix-cache-scorer, parameters: {prefixMatchInfoProducerName: a}}\n"
    )
    data = DataLayer(scheduler.data_needs)
    first, second = data.subscribers
    await second.start()  # started once already: the data layer's start of it must fail
    try:
        with pytest.raises(RuntimeError, match="started once"):
            await data.start()
        with pytest.raises(RuntimeError, match="stopped"):  # the first was started, then stopped again
            await first.start()
    finally:
        await second.stop()
