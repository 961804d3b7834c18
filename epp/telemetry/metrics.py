"""epp's own Prometheus metrics, under the reference pickers' names so existing dashboards keep working.

Every measurement is exposed twice: under GIE's name (``inference_objective_*``,
``inference_extension_*``, ``inference_pool_*``) and under llm-d router's current ``llm_d_epp_*`` twin,
which llm-d emits instead of the GIE names since it removed them (llm-d-router docs/metrics.md). The
llm-d request series add ``fairness_id`` and ``priority`` labels and use llm-d's names
(``request_size_bytes``, ``request_input_tokens``, ``request_running``, ``request_ntpot_seconds`` …);
the scheduler's attempts use ``endpoint_name`` where GIE says ``pod_name``.

Everything lives in one ``CollectorRegistry`` owned by a ``Telemetry`` instance (never the global
registry), so tests and several pickers in one process do not share counters. Pool gauges and the
prefix-index size are computed when scraped instead of on a timer.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from types import MappingProxyType
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge

from epp.datastore import Datastore, EndpointState
from epp.request import LLMRequest, RequestError
from epp.request.usage import Usage
from epp.scheduling.plugins.profiles.disagg import DisaggProfileHandler
from epp.scheduling.prefix.producer import ApproxPrefixCacheProducer
from epp.scheduling.scheduler import Scheduler
from epp.telemetry.plugins import PluginTimings
from epp.telemetry.health import HealthCollector
from epp.telemetry.histogram import FastHistogram, HistogramView
from epp.telemetry.pool import PoolCollector
from epp.telemetry.disagg import DisaggTelemetry
from epp.telemetry.prefix import PrefixTelemetry

_DURATION_BUCKETS = (
    0.005, 0.025, 0.05, 0.1, 0.2, 0.4, 0.6, 0.8, 1.0, 1.25, 1.5, 2, 3, 4, 5, 6, 8, 10, 15, 20, 30, 45, 60,
    120, 180, 240, 300, 360, 480, 600, 900, 1200, 1800, 2700, 3600,
)
# Buckets as the reference declares them (llm-d-router's current values; GIE's are the same but for a
# historical 32778 where 32768 is meant).
_REQUEST_SIZE_BUCKETS = tuple(2**i for i in range(6, 31))  # 64 B … 1 GiB
_RESPONSE_SIZE_BUCKETS = (1,) + tuple(2**i for i in range(3, 17))  # 1 B … 64 KiB
_TOKEN_BUCKETS = (1,) + tuple(2**i for i in range(3, 21))  # 1 … 1 Mi tokens
_OUTPUT_TOKEN_BUCKETS = (1,) + tuple(2**i for i in range(3, 14))  # 1 … 8192 tokens
_NTPOT_BUCKETS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0)
_SCHEDULER_BUCKETS = (0.0001, 0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1)

_MODEL = ("model_name", "target_model_name")
# llm-d's request labels; a measurement's GIE labels are a selection of these (``Twin.pick``).
_LLMD = (*_MODEL, "fairness_id", "priority")
_GIE_MODEL = (0, 1)

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


class Twin:
    """A counter or gauge as a GIE metric and its ``llm_d_epp_*`` twin, updated together. The twin is
    labelled with the full label tuple; the GIE metric with the positions ``pick`` selects from it."""

    __slots__ = ("gie", "llmd", "pick")

    def __init__(self, kind: type, gie: str, llmd: str, doc: str, registry: CollectorRegistry,
                 pick: Sequence[int] = _GIE_MODEL, extra: Sequence[str] = (), **options: Any) -> None:
        labels = (*_LLMD, *extra)
        self.pick = tuple(pick)
        self.gie = kind(gie, doc, [labels[i] for i in self.pick], registry=registry, **options)
        self.llmd = kind(llmd, doc, labels, registry=registry, **options)


class HistogramTwin:
    """A request histogram recorded once (a ``FastHistogram`` keyed by llm-d's labels) and exposed
    twice: llm-d's name with every label, GIE's with model and target model only (series merged)."""

    __slots__ = ("histogram",)

    def __init__(self, gie: str, llmd: str, doc: str, registry: CollectorRegistry, buckets: Sequence[float]) -> None:
        self.histogram = FastHistogram(buckets)
        registry.register(HistogramView(gie, doc, _MODEL, self.histogram, lambda labels: labels[:2]))
        registry.register(HistogramView(llmd, doc, _LLMD, self.histogram))


class Telemetry:
    """Recorder the director and servicer call at each step of a request's life."""

    def __init__(self, datastore: Datastore | None = None, pool_name: str = "", commit: str = "", build_ref: str = "",
                 max_model_labels: int = DEFAULT_MAX_MODEL_LABELS):
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.model_labels = ModelLabels(max_model_labels)
        self.fairness_labels = ModelLabels(max_model_labels)  # fairness ids come from a client header too
        Gauge("epp_model_label_values", "Distinct model names used as metric labels (new ones past the limit "
              "are counted as __other__).", registry=r).set_function(lambda: len(self.model_labels))
        Gauge("epp_model_label_values_limit", "Most distinct model names used as metric labels.",
              registry=r).set(max_model_labels)
        self.requests = Twin(Counter, "inference_objective_request_total", "llm_d_epp_request_total",
                             "Requests routed, by model and priority.", r, pick=(0, 1, 3))
        self.errors = Twin(Counter, "inference_objective_request_error_total", "llm_d_epp_request_error_total",
                           "Requests answered with an error by epp.", r, pick=(0, 1, 4), extra=("error_code",))

        def histogram(gie: str, llmd: str, doc: str, buckets: Sequence[float]) -> HistogramTwin:
            return HistogramTwin(gie, llmd, doc, r, buckets)

        self.duration = histogram("inference_objective_request_duration_seconds", "llm_d_epp_request_duration_seconds",
                                  "Time from request headers to the end of the response.", _DURATION_BUCKETS)
        self.request_sizes = histogram("inference_objective_request_sizes", "llm_d_epp_request_size_bytes",
                                       "Request body sizes in bytes.", _REQUEST_SIZE_BUCKETS)
        self.response_sizes = histogram("inference_objective_response_sizes", "llm_d_epp_response_size_bytes",
                                        "Response body sizes in bytes.", _RESPONSE_SIZE_BUCKETS)
        self.input_tokens = histogram("inference_objective_input_tokens", "llm_d_epp_request_input_tokens",
                                      "Prompt tokens reported by the engine.", _TOKEN_BUCKETS)
        self.output_tokens = histogram("inference_objective_output_tokens", "llm_d_epp_request_output_tokens",
                                       "Completion tokens reported by the engine.", _OUTPUT_TOKEN_BUCKETS)
        self.cached_tokens = histogram("inference_objective_prompt_cached_tokens", "llm_d_epp_request_cached_tokens",
                                       "Prompt tokens served from the engine's prefix cache.", _TOKEN_BUCKETS)
        self.ntpot = histogram("inference_objective_normalized_time_per_output_token_seconds",
                               "llm_d_epp_request_ntpot_seconds",
                               "Request duration divided by the completion tokens the engine reported.", _NTPOT_BUCKETS)
        self.running = Twin(Gauge, "inference_objective_running_requests", "llm_d_epp_request_running",
                            "Requests routed and not yet finished.", r, pick=(0,))
        self.scheduler_duration = FastHistogram(_SCHEDULER_BUCKETS)
        for name in ("inference_extension_scheduler_e2e_duration_seconds", "llm_d_epp_scheduler_e2e_duration_seconds"):
            r.register(HistogramView(name, "Time spent in one scheduling cycle.", (), self.scheduler_duration))
        self.scheduler_attempts = [
            Counter(name, "Scheduling cycles by outcome and chosen endpoint.",
                    ("status", "target_model_name", endpoint_label, "namespace", "port"), registry=r)
            for name, endpoint_label in (("inference_extension_scheduler_attempts_total", "pod_name"),
                                         ("llm_d_epp_scheduler_attempts_total", "endpoint_name"))
        ]
        self.model_rewrites = [
            Counter(name, "Requests whose model an InferenceModelRewrite rule changed.",
                    ("model_rewrite_name", "model_name", "target_model"), registry=r)
            for name in ("inference_extension_model_rewrite_decisions_total", "llm_d_epp_model_rewrite_decisions_total")
        ]
        for name in ("inference_extension_info", "llm_d_epp_info"):
            Gauge(name, "Build information.", ("commit", "build_ref"), registry=r).labels(commit, build_ref).set(1)
        if datastore is not None:
            r.register(PoolCollector(datastore, pool_name))
            r.register(HealthCollector(datastore))
        self.plugin_timings = PluginTimings(r)
        self.prefix = PrefixTelemetry(r)
        self.disagg = DisaggTelemetry(r, self.model_labels)
        self._children: dict[tuple[int, tuple[str, ...]], Any] = {}

    def instrument(self, scheduler: Scheduler) -> None:
        """Time the scheduler's plugin calls and observe its prefix producers' matches and its
        disaggregation decisions."""
        scheduler.instrument(self.plugin_timings)
        for plugin in scheduler.plugins:
            if isinstance(plugin, ApproxPrefixCacheProducer):
                self.prefix.track(plugin)
        if isinstance(scheduler.handler, DisaggProfileHandler):
            self.disagg.track(scheduler.handler)

    def _pair(self, twin: Twin, labels: tuple[str, ...]) -> tuple[Any, Any]:
        """Both children of ``twin`` for llm-d ``labels``, resolved once per label set: ``labels()``
        costs more than the update itself. Label values are bounded (``model_labels``,
        ``fairness_labels``), so this cache is bounded too."""
        key = (id(twin), labels)
        pair = self._children.get(key)
        if pair is None:
            pair = self._children[key] = (twin.gie.labels(*(labels[i] for i in twin.pick)), twin.llmd.labels(*labels))
        return pair

    def _child(self, metric: Any, *labels: str) -> Any:
        key = (id(metric), labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*labels)
        return child

    def _request_labels(self, request: LLMRequest) -> tuple[str, str, str, str]:
        return (self.model_labels(request.model), self.model_labels(request.target_model),
                self.fairness_labels(request.fairness_id), str(request.priority))

    def request_routed(self, request: LLMRequest, body_bytes: int) -> None:
        labels = self._request_labels(request)
        for child in self._pair(self.requests, labels):
            child.inc()
        self.request_sizes.histogram.observe(labels, body_bytes)
        for child in self._pair(self.running, labels):
            child.inc()

    def request_rejected(self, model: str, target_model: str, error: RequestError,
                         request: LLMRequest | None = None) -> None:
        """One refusal; ``request`` (when it was parsed) gives llm-d's fairness and priority labels."""
        fairness, priority = (self.fairness_labels(request.fairness_id), str(request.priority)) if request else ("", "")
        labels = (self.model_labels(model), self.model_labels(target_model), fairness, priority, error_code(error.status))
        for child in self._pair(self.errors, labels):
            child.inc()

    def request_finished(self, request: LLMRequest, duration: float, response_bytes: int | None, usage: Usage) -> None:
        """One routed request ended; response size and usage are recorded only when the response was seen.
        NTPOT (duration / completion tokens) needs both a positive duration and tokens, as in the reference."""
        labels = self._request_labels(request)
        for child in self._pair(self.running, labels):
            child.dec()
        self.duration.histogram.observe(labels, duration)
        observed: list[tuple[HistogramTwin, float | None]] = [
            (self.response_sizes, response_bytes), (self.cached_tokens, usage.cached_tokens)]
        if usage.prompt_tokens:  # token counts of 0 are not recorded (reference)
            observed.append((self.input_tokens, usage.prompt_tokens))
        if usage.completion_tokens:
            observed.append((self.output_tokens, usage.completion_tokens))
            if duration > 0:
                observed.append((self.ntpot, duration / usage.completion_tokens))
        for twin, value in observed:
            if value is not None:
                twin.histogram.observe(labels, value)

    def model_rewritten(self, rewrite_name: str, model: str, target_model: str) -> None:
        """An InferenceModelRewrite rule (object ``rewrite_name``) sent a ``model`` request to ``target_model``."""
        labels = (rewrite_name[:MAX_LABEL_CHARS], self.model_labels(model), self.model_labels(target_model))
        for counter in self.model_rewrites:
            self._child(counter, *labels).inc()

    def scheduled(self, duration: float, target_model: str, endpoint: EndpointState | None) -> None:
        self.scheduler_duration.observe((), duration)
        if endpoint is None:
            labels = ("failure", self.model_labels(target_model), "", "", "")
        else:
            e = endpoint.endpoint
            labels = ("success", self.model_labels(target_model), e.name, e.namespace, str(e.port))
        for counter in self.scheduler_attempts:
            self._child(counter, *labels).inc()
