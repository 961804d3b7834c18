"""``--enable-grpc-stream-metrics``: llm-d-router's opt-in ext_proc stream metrics
(``pkg/epp/metrics``: ``extproc_streams_inflight``, ``extproc_stream_duration_seconds``,
``extproc_streams_total{code}`` under the ``llm_d_epp`` subsystem). ``code`` is the gRPC status name as
grpc-go spells it (``OK``, ``Canceled``, ``InvalidArgument`` …), so dashboards built on them keep working.

One difference: grpc.aio hands the servicer a client's cancellation (RST_STREAM) as a plain end of
stream, so on that transport such streams count as ``OK``; the native transport counts them ``Canceled``.
"""

from __future__ import annotations

import time

import grpc
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

DURATION_BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60, 120, 300, 600)
# grpc-go's codes.Code.String() for the codes an ext_proc stream can end with
GO_CODE_NAMES = {
    grpc.StatusCode.OK: "OK", grpc.StatusCode.CANCELLED: "Canceled", grpc.StatusCode.UNKNOWN: "Unknown",
    grpc.StatusCode.INVALID_ARGUMENT: "InvalidArgument", grpc.StatusCode.DEADLINE_EXCEEDED: "DeadlineExceeded",
    grpc.StatusCode.RESOURCE_EXHAUSTED: "ResourceExhausted", grpc.StatusCode.INTERNAL: "Internal",
    grpc.StatusCode.UNAVAILABLE: "Unavailable",
}
_BY_NUMBER = {code.value[0]: name for code, name in GO_CODE_NAMES.items()}


def code_name(code: grpc.StatusCode | int) -> str:
    """grpc-go's name for a status (a ``grpc.StatusCode`` or its number, as the native transport has it)."""
    if isinstance(code, grpc.StatusCode):
        return GO_CODE_NAMES.get(code, code.name.title().replace("_", ""))
    return _BY_NUMBER.get(code, f"Code({code})")


class StreamMetrics:
    """Counts ext_proc streams from open to close; ``started`` returns the token ``finished`` takes."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.inflight = Gauge("llm_d_epp_extproc_streams_inflight", "Number of ext_proc gRPC streams currently open.",
                              registry=registry)
        self.duration = Histogram("llm_d_epp_extproc_stream_duration_seconds",
                                  "Duration an ext_proc gRPC stream stays open, in seconds.",
                                  buckets=DURATION_BUCKETS, registry=registry)
        self.total = Counter("llm_d_epp_extproc_streams_total",
                             "Total ext_proc gRPC streams completed, by gRPC status code.", ["code"], registry=registry)

    def started(self) -> float:
        self.inflight.inc()
        return time.monotonic()

    def finished(self, started_at: float, code: grpc.StatusCode | int) -> None:
        self.inflight.dec()
        self.duration.observe(time.monotonic() - started_at)
        self.total.labels(code_name(code)).inc()
