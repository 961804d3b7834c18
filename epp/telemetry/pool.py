"""Pool gauges over the endpoints the datastore holds right now, computed when scraped.

GIE names (``inference_pool_*``) and llm-d's (``llm_d_epp_*``: ``ready_endpoints``,
``per_endpoint_queue_size{model_server_endpoint}`` and population standard deviations besides the
means). Averages and deviations use only endpoints with fresh metrics (younger than the staleness
threshold), as the reference does; the ready count is every member.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from statistics import fmean, pstdev

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from epp.datastore import Datastore, EndpointMetrics, EndpointState

_SERIES: tuple[tuple[str, Callable[[EndpointMetrics], float], str], ...] = (  # (what, how it is computed, help)
    ("kv_cache_utilization", lambda m: m.kv_usage, "KV-cache usage (0..1)"),
    ("queue_size", lambda m: m.waiting, "waiting requests"),
    ("running_requests", lambda m: m.running, "running requests"),
)


def _mean(values: Sequence[float]) -> float:
    return fmean(values) if values else 0.0


class PoolCollector(Collector):
    def __init__(self, datastore: Datastore, pool_name: str) -> None:
        self.datastore = datastore
        self.pool_name = pool_name

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        states = self.datastore.endpoints()
        fresh = [s.metrics for s in states if not s.stale and s.metrics is not None]
        name = self.pool_name

        def gauge(metric: str, doc: str, value: float) -> GaugeMetricFamily:
            family = GaugeMetricFamily(metric, doc, labels=("name",))
            family.add_metric((name,), value)
            return family

        for metric in ("inference_pool_ready_pods", "llm_d_epp_ready_endpoints"):
            yield gauge(metric, "Endpoints in the pool.", len(states))
        for what, value_of, doc in _SERIES:
            values = [float(value_of(m)) for m in fresh]
            mean = _mean(values)
            yield gauge(f"inference_pool_average_{what}", f"Mean {doc} over fresh endpoints.", mean)
            yield gauge(f"llm_d_epp_average_{what}", f"Mean {doc} over fresh endpoints.", mean)
            yield gauge(f"llm_d_epp_std_dev_{what}", f"Population standard deviation of {doc} over fresh endpoints.",
                        pstdev(values) if values else 0.0)
        for metric, label in (("inference_pool_per_pod_queue_size", "model_server_pod"),
                              ("llm_d_epp_per_endpoint_queue_size", "model_server_endpoint")):
            per_endpoint = GaugeMetricFamily(metric, "Waiting requests per endpoint.", labels=("name", label))
            for s in states:
                if not s.stale and s.metrics is not None:
                    per_endpoint.add_metric((name, s.name), s.metrics.waiting)
            yield per_endpoint
        yield from _engine_token_counters(states, name)


def _engine_token_counters(states: Sequence[EndpointState], pool: str) -> Iterator[CounterMetricFamily]:
    """Each endpoint's prompt and cached-prompt token counters as its engine last reported them:
    prefix-cache hits per engine even when responses carry no ``usage.prompt_tokens_details`` (vLLM's
    default), so ``rate(cached) / rate(prompt)`` is the pool's hit ratio."""
    families = (
        ("epp_engine_prompt_tokens", "Prompt tokens the engine processed (its own counter).", "prompt_tokens"),
        ("epp_engine_prompt_tokens_cached", "Prompt tokens the engine served from its prefix cache (its own"
         " counter: vllm:prompt_tokens_cached_total, sglang:cached_tokens_total).", "cached_prompt_tokens"),
    )  # fmt: skip
    for metric, doc, field in families:
        family = CounterMetricFamily(metric, doc, labels=("name", "endpoint"))
        for s in states:
            value = None if s.metrics is None else getattr(s.metrics, field)
            if value is not None:
                family.add_metric((pool, s.name), value)
        yield family
