"""Flow-control metrics under llm-d-router's names (``llm_d_epp_flow_control_*``, pkg/epp/metrics) and
the ``inference_extension_flow_control_*`` twins GIE and older llm-d dashboards read.

Fairness ids come from a client header, so they pass through the same bounded label set as the
request metrics (``Telemetry.fairness_labels``); model names likewise.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from prometheus_client import CollectorRegistry, Counter, Gauge

from epp.flowcontrol.controller import Outcome
from epp.request import LLMRequest
from epp.telemetry.histogram import FastHistogram, HistogramView

_QUEUE_BUCKETS = (0.0001, 0.0005, 0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
_CYCLE_BUCKETS = (0.0001, 0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1)
_PREFIXES = ("llm_d_epp", "inference_extension")
_QUEUE_LABELS = ("fairness_id", "priority", "outcome", "inference_pool", "model_name", "target_model_name")
_SIZE_LABELS = ("fairness_id", "priority", "inference_pool", "model_name", "target_model_name")


class FlowControlMetrics:
    """The controller's ``FlowRecorder`` in ``epp serve``."""

    def __init__(self, registry: CollectorRegistry, pool_name: str, model_label: Callable[[str], str],
                 fairness_label: Callable[[str], str]) -> None:
        self.pool = pool_name
        self.model_label = model_label
        self.fairness_label = fairness_label
        self.queue_duration = FastHistogram(_QUEUE_BUCKETS)
        self.cycle = FastHistogram(_CYCLE_BUCKETS)
        for prefix in _PREFIXES:
            registry.register(HistogramView(
                f"{prefix}_flow_control_request_queue_duration_seconds",
                "Time requests spend in the flow control layer, from enqueue to final outcome.",
                _QUEUE_LABELS, self.queue_duration))
            registry.register(HistogramView(
                f"{prefix}_flow_control_dispatch_cycle_duration_seconds",
                "Time taken by each dispatch cycle of the flow control layer.", (), self.cycle))
        self.queue_size = [Gauge(f"{p}_flow_control_queue_size", "Requests held in the flow control queues.",
                                 _SIZE_LABELS, registry=registry) for p in _PREFIXES]
        self.queue_bytes = [Gauge(f"{p}_flow_control_queue_bytes", "Bytes of the requests held in the flow control queues.",
                                  _SIZE_LABELS, registry=registry) for p in _PREFIXES]
        self.saturation_gauge = [Gauge(f"{p}_flow_control_pool_saturation",
                                       "Pool saturation gating flow control dispatch (1.0 is the set point).",
                                       ("inference_pool", "stage"), registry=registry).labels(pool_name, "effective")
                                 for p in _PREFIXES]
        self.requests = Counter("llm_d_epp_flow_control_requests_total",
                                "Requests processed by the flow control layer, by outcome.",
                                ("outcome", "priority", "inference_pool"), registry=registry)

    def _size_labels(self, request: LLMRequest) -> tuple[str, ...]:
        return (self.fairness_label(request.fairness_id), str(request.priority), self.pool,
                self.model_label(request.model), self.model_label(request.target_model))

    def _gauges(self, gauges: Sequence[Gauge], labels: tuple[str, ...], delta: float) -> None:
        for gauge in gauges:
            gauge.labels(*labels).inc(delta)

    def enqueued(self, request: LLMRequest, size: int) -> None:
        labels = self._size_labels(request)
        self._gauges(self.queue_size, labels, 1)
        self._gauges(self.queue_bytes, labels, size)

    def left_queue(self, request: LLMRequest, size: int, outcome: Outcome, waited: float, queued: bool) -> None:
        labels = self._size_labels(request)
        if queued:
            self._gauges(self.queue_size, labels, -1)
            self._gauges(self.queue_bytes, labels, -size)
        fairness, priority, pool, model, target = labels
        self.queue_duration.observe((fairness, priority, outcome.value, pool, model, target), waited)
        self.requests.labels(outcome.value, priority, pool).inc()

    def saturation(self, value: float) -> None:
        for gauge in self.saturation_gauge:
            gauge.set(value)

    def dispatch_cycle(self, seconds: float) -> None:
        self.cycle.observe((), seconds)
