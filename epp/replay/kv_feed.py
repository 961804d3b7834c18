"""Simulated engines' KV-cache events → the scheduler's consumers, through the real wire format.

Each engine step's events become one message exactly as ``epp sim`` publishes it on ZMQ (topic
``kv@<host:port>@<model>``, an 8-byte sequence number counting from 0 per engine, the msgpack batch
of ``epp.kvevents.encode.encode_batch`` in today's vLLM encoding: tagged maps, ``[ts, events, rank]``)
and are decoded by ``epp.kvevents.decode.decode_message``, the
subscriber's decoder: an encoding or decoding bug shows in replay as it would in production, instead
of being skipped by handing the engine's event objects over directly. The batch then goes to every
sink, as each picker replica's own subscription would receive it; the ZMQ transport itself is the
one thing left out (it would only add wall time).
"""

from __future__ import annotations

from collections.abc import Sequence

from epp.datastore import Endpoint
from epp.engine.block_pool import KVCacheEvent
from epp.kvevents.decode import decode_message, parse_topic
from epp.contracts.kv_events import KVEventSink
from epp.kvevents.encode import default_topic, frames


class KVEventFeed:
    """Delivers engine event batches to ``sinks``; ``batches`` counts what was delivered (so a report
    can show the feed was live)."""

    def __init__(self, sinks: Sequence[KVEventSink], endpoints: Sequence[Endpoint], model: str) -> None:
        self.sinks = list(sinks)
        self._topics = {e.name: default_topic(e.hostport, model).encode() for e in endpoints}
        self._seq = dict.fromkeys(self._topics, 0)
        self.batches = 0

    def publish(self, endpoint: str, ts: float, events: Sequence[KVCacheEvent]) -> None:
        """One engine step's events from ``endpoint`` at virtual time ``ts``; nothing is sent for a step
        without events (vLLM's publisher sends no empty batches, so sequence numbers stay dense)."""
        if not events:
            return
        seq = self._seq[endpoint]
        self._seq[endpoint] = seq + 1
        batch = decode_message(frames(self._topics[endpoint], seq, ts, events, {}))
        model = parse_topic(batch.topic).model
        for sink in self.sinks:
            sink.ingest(endpoint, batch.seq, batch.events, model)
        self.batches += 1
