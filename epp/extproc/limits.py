"""Bounds on what ext_proc streams may hold, and gauges that show how full they are.

One stream is one HTTP request for its whole life (request body, then the response), so the number of
live streams is the picker's in-flight request count. ``StreamLimiter`` admits at most
``max_streams`` of them; the next one is answered at once with a 503 OpenAI error, which Envoy relays
to the client as is (a gRPC error status would become an opaque 500, or with fail-open an unrouted
request). Each admitted stream holds at most ``--max-body-bytes`` of request body and a bounded
response copy, so memory is bounded by ``max_streams`` × that.

Gauges are computed when scraped (``set_function``), so tracking costs nothing per message.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge

from epp.extproc.stream import RequestStream
from epp.request import RequestError

# gRPC itself refuses streams beyond this multiple of the limit (RESOURCE_EXHAUSTED): a backstop for
# streams that never send their first message and so never reach the limiter's 503.
GRPC_BACKSTOP_FACTOR = 2


def overloaded(limit: int) -> RequestError:
    return RequestError(503, f"the endpoint picker is at its limit of {limit} concurrent requests; retry later",
                        error_type="service_unavailable", code="overloaded")


class StreamLimiter:
    """Live streams, their count against the limit, and their buffered bytes as Prometheus gauges."""

    def __init__(self, max_streams: int, max_body_bytes: int = 0,
                 registry: CollectorRegistry | None = None) -> None:
        if max_streams < 1:
            raise ValueError(f"max_streams must be at least 1, got {max_streams}")
        self.max_streams = max_streams
        self._live: set[RequestStream] = set()
        self.refused = Counter("epp_extproc_streams_refused_total",
                               "ext_proc streams answered with 503 because the stream limit was reached.",
                               registry=registry)
        Gauge("epp_extproc_streams", "Live ext_proc streams (requests in flight through epp).",
              registry=registry).set_function(lambda: len(self._live))
        Gauge("epp_extproc_streams_limit", "Most live ext_proc streams epp admits (--max-concurrent-streams).",
              registry=registry).set(max_streams)
        Gauge("epp_extproc_buffered_bytes",
              "Bytes held for live streams: request bodies being collected, response copies, partial SSE lines.",
              registry=registry).set_function(self.buffered_bytes)
        Gauge("epp_extproc_stream_buffer_limit_bytes", "Most request-body bytes one stream may hold (--max-body-bytes).",
              registry=registry).set(max_body_bytes)

    def __len__(self) -> int:
        return len(self._live)

    def admit(self, stream: RequestStream) -> bool:
        """Track ``stream`` if there is room; False (and counted) when the limit is reached."""
        if len(self._live) >= self.max_streams:
            self.refused.inc()
            return False
        self._live.add(stream)
        return True

    def release(self, stream: RequestStream) -> None:
        self._live.discard(stream)

    def buffered_bytes(self) -> int:
        return sum(stream.buffered_bytes for stream in self._live)
