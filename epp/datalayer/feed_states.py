"""``epp_kv_events_feed_state{endpoint,state}`` and ``epp_kv_events_key_agreement{endpoint,kind,state}``:
per endpoint of a KV-event subscription, how far its view is trusted, read at scrape time (nothing on
the pick path)."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from epp.contracts.kv_events import PROMPT_KINDS, KVEventView
from epp.datalayer.kv_events import KVEventSubscriber


class FeedStates(Collector):
    """The states ``view`` reports for each endpoint ``subscriber`` knows about."""

    def __init__(self, view: KVEventView, subscriber: KVEventSubscriber) -> None:
        self._view = view
        self._subscriber = subscriber

    def collect(self) -> Iterator[Metric]:
        family = GaugeMetricFamily(
            "epp_kv_events_feed_state",
            "1 for each endpoint's KV-event feed state; only 'live' feeds are matched from engine events.",
            labels=["endpoint", "state"],
        )
        agreement = GaugeMetricFamily(
            "epp_kv_events_key_agreement",
            "1 for each endpoint's and prompt kind's key agreement: whether epp's token ids for chat or"
            " completion prompts were seen to match the engine's blocks (only agreed kinds use engine events).",
            labels=["endpoint", "kind", "state"],
        )
        for name in sorted(self._subscriber.endpoints):
            family.add_metric([name, self._view.feed_state(name).value], 1)
            for kind in PROMPT_KINDS:
                agreement.add_metric([name, kind, self._view.key_agreement(name, kind).value], 1)
        yield family
        yield agreement
