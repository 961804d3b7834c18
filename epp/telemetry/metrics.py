"""epp's own Prometheus metrics, under the reference picker's names so existing dashboards keep working.

Everything lives in one ``CollectorRegistry`` owned by a ``Telemetry`` instance (never the global
registry), so tests and several pickers in one process do not share counters. Pool gauges are computed
from the datastore when scraped instead of on a timer.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from types import MappingProxyType
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from epp.datastore import Datastore, EndpointState
from epp.request import LLMRequest, RequestError
from epp.request.usage import Usage

_DURATION_BUCKETS = (
    0.005, 0.025, 0.05, 0.1, 0.2, 0.4, 0.6, 0.8, 1.0, 1.25, 1.5, 2, 3, 4, 5, 6, 8, 10, 15, 20, 30, 45, 60,
    120, 180, 240, 300, 360, 480, 600, 900, 1200, 1800, 2700, 3600,
)
_SIZE_BUCKETS = tuple(2**i for i in range(6, 31))  # 64 B … 1 GiB
_TOKEN_BUCKETS = (1,) + tuple(2**i for i in range(3, 21))  # 1 … 1 Mi tokens
_SCHEDULER_BUCKETS = (0.0001, 0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1)

_MODEL = ("model_name", "target_model_name")

# HTTP status → the reference's error-code label value (its errutil codes).
ERROR_CODES: Mapping[int, str] = MappingProxyType({
    400: "BadRequest",
    412: "PreconditionFailed",
    413: "BadRequest",
    429: "InferencePoolResourceExhausted",
    500: "Internal",
    503: "ServiceUnavailable",
})


def error_code(status: int) -> str:
    return ERROR_CODES.get(status, "Internal")


OTHER_MODEL = "__other__"
DEFAULT_MAX_MODEL_LABELS = 1000
MAX_LABEL_CHARS = 256


class ModelLabels:
    """Model names (chosen by clients) as label values: at most ``limit`` distinct ones, each ≤ 256 chars.

    Every label value is a time series held forever, so without a bound a client sending random model
    names grows epp's memory without end. Names seen first keep their own series; once the limit is
    reached, new names are counted under ``__other__``. A name always maps to the same value, so
    gauges incremented and decremented under it stay balanced.
    """

    def __init__(self, limit: int = DEFAULT_MAX_MODEL_LABELS) -> None:
        self.limit = limit
        self._seen: set[str] = set()

    def __len__(self) -> int:
        return len(self._seen)

    def __call__(self, name: str) -> str:
        name = name[:MAX_LABEL_CHARS]
        if name in self._seen:
            return name
        if len(self._seen) >= self.limit:
            return OTHER_MODEL
        self._seen.add(name)
        return name


class Telemetry:
    """Recorder the director and servicer call at each step of a request's life."""

    def __init__(self, datastore: Datastore | None = None, pool_name: str = "", commit: str = "", build_ref: str = "",
                 max_model_labels: int = DEFAULT_MAX_MODEL_LABELS):
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.model_labels = ModelLabels(max_model_labels)
        Gauge("epp_model_label_values", "Distinct model names used as metric labels (new ones past the limit "
              "are counted as __other__).", registry=r).set_function(lambda: len(self.model_labels))
        Gauge("epp_model_label_values_limit", "Most distinct model names used as metric labels.",
              registry=r).set(max_model_labels)
        self.requests = Counter(
            "inference_objective_request_total", "Requests routed, by model and priority.",
            (*_MODEL, "priority"), registry=r,
        )
        self.errors = Counter(
            "inference_objective_request_error_total", "Requests answered with an error by epp.",
            (*_MODEL, "error_code"), registry=r,
        )
        self.duration = Histogram(
            "inference_objective_request_duration_seconds", "Time from request headers to the end of the response.",
            _MODEL, buckets=_DURATION_BUCKETS, registry=r,
        )
        self.request_sizes = Histogram(
            "inference_objective_request_sizes", "Request body sizes in bytes.", _MODEL, buckets=_SIZE_BUCKETS, registry=r
        )
        self.response_sizes = Histogram(
            "inference_objective_response_sizes", "Response body sizes in bytes.", _MODEL, buckets=_SIZE_BUCKETS,
            registry=r,
        )
        self.input_tokens = Histogram(
            "inference_objective_input_tokens", "Prompt tokens reported by the engine.", _MODEL,
            buckets=_TOKEN_BUCKETS, registry=r,
        )
        self.output_tokens = Histogram(
            "inference_objective_output_tokens", "Completion tokens reported by the engine.", _MODEL,
            buckets=_TOKEN_BUCKETS, registry=r,
        )
        self.cached_tokens = Histogram(
            "inference_objective_prompt_cached_tokens", "Prompt tokens served from the engine's prefix cache.",
            _MODEL, buckets=_TOKEN_BUCKETS, registry=r,
        )
        self.running = Gauge(
            "inference_objective_running_requests", "Requests routed and not yet finished.", ("model_name",),
            registry=r,
        )
        self.scheduler_duration = Histogram(
            "inference_extension_scheduler_e2e_duration_seconds", "Time spent in one scheduling cycle.",
            buckets=_SCHEDULER_BUCKETS, registry=r,
        )
        self.scheduler_attempts = Counter(
            "inference_extension_scheduler_attempts_total", "Scheduling cycles by outcome and chosen endpoint.",
            ("status", "target_model_name", "pod_name", "namespace", "port"), registry=r,
        )
        self.model_rewrites = Counter(
            "inference_extension_model_rewrite_decisions_total", "Requests whose model an InferenceModelRewrite rule changed.",
            ("model_rewrite_name", "model_name", "target_model"), registry=r,
        )
        info = Gauge("inference_extension_info", "Build information.", ("commit", "build_ref"), registry=r)
        info.labels(commit=commit, build_ref=build_ref).set(1)
        if datastore is not None:
            r.register(PoolCollector(datastore, pool_name))
        self._children: dict[tuple[int, tuple[str, ...]], Any] = {}

    def _child(self, metric: Any, *labels: str) -> Any:
        """``metric.labels(*labels)``, resolved once per label set: ``labels()`` costs more than the update
        itself. Children appear at first use exactly as before; model labels are already bounded by
        ``model_labels``, so this cache is bounded too."""
        key = (id(metric), labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*labels)
        return child

    def request_routed(self, request: LLMRequest, body_bytes: int) -> None:
        model, target = self._labels(request.model, request.target_model)
        self._child(self.requests, model, target, str(request.priority)).inc()
        self._child(self.request_sizes, model, target).observe(body_bytes)
        self._child(self.running, model).inc()

    def request_rejected(self, model: str, target_model: str, error: RequestError) -> None:
        self.errors.labels(*self._labels(model, target_model), error_code(error.status)).inc()

    def request_finished(self, request: LLMRequest, duration: float, response_bytes: int | None, usage: Usage) -> None:
        """One routed request ended; response size and usage are recorded only when the response was seen."""
        model, target = self._labels(request.model, request.target_model)
        self._child(self.running, model).dec()
        self._child(self.duration, model, target).observe(duration)
        if response_bytes is not None:
            self._child(self.response_sizes, model, target).observe(response_bytes)
        if usage.prompt_tokens is not None:
            self._child(self.input_tokens, model, target).observe(usage.prompt_tokens)
        if usage.completion_tokens is not None:
            self._child(self.output_tokens, model, target).observe(usage.completion_tokens)
        if usage.cached_tokens is not None:
            self._child(self.cached_tokens, model, target).observe(usage.cached_tokens)

    def model_rewritten(self, rewrite_name: str, model: str, target_model: str) -> None:
        """An InferenceModelRewrite rule (object ``rewrite_name``) sent a ``model`` request to ``target_model``."""
        self._child(self.model_rewrites, rewrite_name[:MAX_LABEL_CHARS], *self._labels(model, target_model)).inc()

    def _labels(self, model: str, target_model: str) -> tuple[str, str]:
        return self.model_labels(model), self.model_labels(target_model)

    def scheduled(self, duration: float, target_model: str, endpoint: EndpointState | None) -> None:
        self.scheduler_duration.observe(duration)
        if endpoint is None:
            self._child(self.scheduler_attempts, "failure", self.model_labels(target_model), "", "", "").inc()
        else:
            e = endpoint.endpoint
            self._child(self.scheduler_attempts, "success", self.model_labels(target_model), e.name, e.namespace,
                        str(e.port)).inc()


class PoolCollector(Collector):
    """``inference_pool_*`` gauges over the endpoints the datastore holds right now.

    Averages use only endpoints with fresh metrics (younger than the staleness threshold), as the
    reference does; ``ready_pods`` counts every member.
    """

    def __init__(self, datastore: Datastore, pool_name: str) -> None:
        self.datastore = datastore
        self.pool_name = pool_name

    def collect(self) -> Iterator[GaugeMetricFamily]:
        states = self.datastore.endpoints()
        fresh = [s.metrics for s in states if not s.stale and s.metrics is not None]
        name = self.pool_name

        def gauge(metric: str, doc: str, value: float) -> GaugeMetricFamily:
            family = GaugeMetricFamily(metric, doc, labels=("name",))
            family.add_metric((name,), value)
            return family

        yield gauge("inference_pool_ready_pods", "Endpoints in the pool.", len(states))
        n = len(fresh) or 1
        yield gauge("inference_pool_average_kv_cache_utilization", "Mean KV-cache usage (0..1) over fresh endpoints.",
                    sum(m.kv_usage for m in fresh) / n)
        yield gauge("inference_pool_average_queue_size", "Mean waiting requests over fresh endpoints.",
                    sum(m.waiting for m in fresh) / n)
        yield gauge("inference_pool_average_running_requests", "Mean running requests over fresh endpoints.",
                    sum(m.running for m in fresh) / n)
        per_pod = GaugeMetricFamily(
            "inference_pool_per_pod_queue_size", "Waiting requests per endpoint.", labels=("name", "model_server_pod")
        )
        for s in states:
            if not s.stale and s.metrics is not None:
                per_pod.add_metric((name, s.name), s.metrics.waiting)
        yield per_pod
