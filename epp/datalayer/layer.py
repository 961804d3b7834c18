"""``DataLayer``: opens the feeds a scheduler's plugins asked for, and owns their lifecycle."""

from __future__ import annotations

from prometheus_client import CollectorRegistry

from epp._util.lifecycle import AsyncService
from epp.contracts.datalayer import DataNeeds
from epp.datalayer.feed_states import FeedStates
from epp.datalayer.kv_events import KVEventSubscriber
from epp.datalayer.offload import ThreadOffload
from epp.datalayer.shared_prefix import RedisReplicator
from epp.datastore import Datastore


class DataLayer(AsyncService):
    """One KV-event subscriber per ``KVEventFeed``, one Redis replicator per ``SharedIndexFeed``,
    background loading for the tokenizer sources, and one worker thread (``ThreadOffload``) for the
    plugins that offload work, for one scheduler's ``DataNeeds``.

    Order of use: ``attach`` (the subscribers follow membership; endpoints known already are replayed),
    ``register_metrics`` once, then ``async with`` (or ``start``/``stop``): start opens everything, stop
    closes it in reverse order. Nothing is opened before ``start``."""

    def __init__(self, needs: DataNeeds) -> None:
        self.needs = needs
        self.subscribers = [
            KVEventSubscriber(
                feed.view, feed.mode, port=feed.port, bind_endpoint=feed.bind_endpoint, topic_filter=feed.topic_filter,
                rank_offset=feed.rank_offset, replay_port=feed.replay_port,
            )  # fmt: skip
            for feed in needs.kv_event_feeds
        ]
        self.replicators = [
            RedisReplicator(shared.outbox, shared.url, stream=shared.stream, max_len=shared.max_len)
            for shared in needs.shared_indexes
        ]
        self.offload = ThreadOffload() if needs.offloading else None
        self._started: list[KVEventSubscriber | RedisReplicator | ThreadOffload] = []

    def attach(self, datastore: Datastore) -> None:
        """Follow ``datastore``'s membership: a connect-mode subscriber opens one socket per endpoint."""
        for subscriber in self.subscribers:
            datastore.add_listener(subscriber)

    def register_metrics(self, registry: CollectorRegistry) -> None:
        """Export the subscribers', the feeds' trust and the replicators' series; call before ``start``."""
        for feed, subscriber in zip(self.needs.kv_event_feeds, self.subscribers):
            subscriber.register_metrics(registry)
            registry.register(FeedStates(feed.view, subscriber))
        for replicator in self.replicators:
            replicator.register_metrics(registry)
        if self.offload is not None:
            self.offload.register_metrics(registry)

    async def start(self) -> None:
        """Tokenizers load off the pick path from now on; subscribers, replicators and the offload start
        (the offload last: it stops first, while the index it finishes into is still replicated). A part
        that fails to start stops the ones started before it, and the error propagates."""
        for source in self.needs.tokenizer_sources:
            source.start_background()
        parts: list[KVEventSubscriber | RedisReplicator | ThreadOffload] = [*self.subscribers, *self.replicators]
        if self.offload is not None:
            parts.append(self.offload)
        try:
            for part in parts:
                await part.start()
                self._started.append(part)
        except BaseException:
            await self.stop()
            raise
        if self.offload is not None:
            for plugin in self.needs.offloading:
                plugin.offload_to(self.offload)

    async def stop(self) -> None:
        """Stop what started, in reverse order (plugins keep the stopped offload, which refuses new jobs:
        a request ending after this skips its prompt's rest). Idempotent."""
        started, self._started = self._started, []
        for part in reversed(started):
            await part.stop()
