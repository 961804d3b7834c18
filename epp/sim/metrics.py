"""``/metrics`` in vLLM's (or SGLang's) real names, types and labels, read from the engine at scrape time.

Gauges and counters come straight from ``EngineCore.stats()`` when Prometheus scrapes, so they can
never drift from the engine. Latency histograms are kept here (observed as outputs are delivered),
with vLLM's bucket boundaries; they are plain lists rather than ``prometheus_client`` metric objects
so observing costs a bisect and no lock, and so no process-global setting (``_created`` series) is
touched. Everything lives in this object's own ``CollectorRegistry``.

Latencies are in the engine's clock: with ``--time-scale`` < 1 they are what the simulated GPU would
show, not the shortened wall time.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Iterator, Sequence

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from epp.engine.core import EngineCore

TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0,
                40.0, 80.0, 160.0, 640.0, 2560.0)  # fmt: skip
ITL_BUCKETS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0,
               80.0)  # fmt: skip
E2E_BUCKETS = (0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 120.0, 240.0, 480.0,
               960.0, 1920.0, 7680.0)  # fmt: skip


class Histogram:
    """Cumulative-on-export bucket counts."""

    __slots__ = ("bounds", "counts", "total", "count")

    def __init__(self, bounds: Sequence[float]) -> None:
        self.bounds = tuple(bounds)
        self.counts = [0] * (len(self.bounds) + 1)
        self.total = 0.0
        self.count = 0

    def observe(self, value: float, times: int = 1) -> None:
        self.counts[bisect_left(self.bounds, value)] += times
        self.total += value * times
        self.count += times

    def family(self, name: str, doc: str, labels: dict[str, str]) -> HistogramMetricFamily:
        family = HistogramMetricFamily(name, doc, labels=list(labels))
        running = 0
        buckets: list[tuple[str, float]] = []
        for bound, n in zip((*map(str, self.bounds), "+Inf"), self.counts, strict=True):
            running += n
            buckets.append((bound, running))
        family.add_metric(list(labels.values()), buckets, self.total)
        return family


class SimMetrics(Collector):
    """The collector and its registry. ``engine`` is ``vllm`` or ``sglang``; ``wall_time`` stamps
    ``vllm:lora_requests_info`` (whose value is a Unix timestamp, as vLLM sets it)."""

    def __init__(self, core: EngineCore, *, engine: str, model_name: str, wall_time: Callable[[], float]) -> None:
        if engine not in ("vllm", "sglang"):
            raise ValueError(f"unknown engine {engine!r}")
        self.core = core
        self.engine = engine
        self.model_name = model_name
        self.wall_time = wall_time
        self.ttft = Histogram(TTFT_BUCKETS)
        self.itl = Histogram(ITL_BUCKETS)
        self.e2e = Histogram(E2E_BUCKETS)
        self.num_success = 0
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(self)

    def render(self) -> bytes:
        return generate_latest(self.registry)

    def collect(self) -> Iterator[Metric]:
        return self._vllm() if self.engine == "vllm" else self._sglang()

    def _vllm(self) -> Iterator[Metric]:
        s = self.core.stats()
        labels = {"model_name": self.model_name, "engine": "0"}
        keys, values = list(labels), list(labels.values())

        def gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
            family = GaugeMetricFamily(name, doc, labels=keys)
            family.add_metric(values, value)
            return family

        def counter(name: str, doc: str, value: float) -> CounterMetricFamily:
            family = CounterMetricFamily(name, doc, labels=keys)
            family.add_metric(values, value)
            return family

        yield gauge("vllm:num_requests_running", "Number of requests in model execution batches.", s.num_running)
        yield gauge("vllm:num_requests_waiting", "Number of requests waiting to be processed.", s.num_waiting)
        yield gauge("vllm:kv_cache_usage_perc", "KV-cache usage. 1 means 100 percent usage.", s.kv_usage)
        yield gauge("vllm:gpu_cache_usage_perc", "GPU KV-cache usage (deprecated name).", s.kv_usage)
        for prefix in ("vllm:", "vllm:gpu_"):
            yield counter(f"{prefix}prefix_cache_queries", "Prefix cache queries, in tokens.", s.prefix_cache_queries)
            yield counter(f"{prefix}prefix_cache_hits", "Prefix cache hits, in tokens.", s.prefix_cache_hits)
        yield counter("vllm:num_preemptions", "Cumulative number of preemptions.", s.num_preemptions)
        yield counter("vllm:prompt_tokens", "Number of prefill tokens processed.", s.prompt_tokens_total)
        yield counter("vllm:generation_tokens", "Number of generation tokens processed.", s.generation_tokens_total)
        success = CounterMetricFamily(
            "vllm:request_success", "Count of successfully processed requests.", labels=[*keys, "finished_reason"]
        )
        success.add_metric([*values, "length"], self.num_success)
        yield success
        yield self.ttft.family("vllm:time_to_first_token_seconds", "Histogram of time to first token.", labels)
        yield self.itl.family("vllm:inter_token_latency_seconds", "Histogram of inter-token latency.", labels)
        yield self.itl.family("vllm:time_per_output_token_seconds", "Deprecated: inter-token latency.", labels)
        yield self.e2e.family("vllm:e2e_request_latency_seconds", "Histogram of e2e request latency.", labels)
        lora = GaugeMetricFamily(
            "vllm:lora_requests_info",
            "Running stats on lora requests.",
            labels=["max_lora", "waiting_lora_adapters", "running_lora_adapters"],
        )
        lora.add_metric(
            [str(s.max_loras), ",".join(sorted(s.waiting_loras)), ",".join(sorted(s.running_loras))],
            self.wall_time(),
        )
        yield lora
        cfg = self.core.config
        info = {
            "block_size": str(s.block_size),
            "cache_dtype": "auto",
            "enable_prefix_caching": str(cfg.enable_prefix_caching),
            "gpu_memory_utilization": str(cfg.gpu_memory_utilization),
            "num_cpu_blocks": "0",
            "num_gpu_blocks": str(s.num_gpu_blocks),
            "engine": "0",
        }
        cache = GaugeMetricFamily(
            "vllm:cache_config_info", "Information of the LLMEngine CacheConfig", labels=list(info)
        )
        cache.add_metric(list(info.values()), 1.0)
        yield cache

    def _sglang(self) -> Iterator[Metric]:
        s = self.core.stats()
        labels = {"model_name": self.model_name}
        keys, values = list(labels), list(labels.values())

        def family(
            kind: type[GaugeMetricFamily] | type[CounterMetricFamily], name: str, doc: str, value: float
        ) -> Metric:
            metric = kind(name, doc, labels=keys)
            metric.add_metric(values, value)
            return metric

        hit_rate = s.prefix_cache_hits / s.prefix_cache_queries if s.prefix_cache_queries else 0.0
        yield family(GaugeMetricFamily, "sglang:num_running_reqs", "The number of running requests.", s.num_running)
        yield family(
            GaugeMetricFamily, "sglang:num_queue_reqs", "The number of requests in the waiting queue.", s.num_waiting
        )
        yield family(GaugeMetricFamily, "sglang:token_usage", "The token usage (0..1).", s.kv_usage)
        yield family(GaugeMetricFamily, "sglang:cache_hit_rate", "The prefix cache hit rate.", hit_rate)
        yield family(
            CounterMetricFamily, "sglang:prompt_tokens", "Number of prefill tokens processed.", s.prompt_tokens_total
        )
        yield family(
            CounterMetricFamily,
            "sglang:generation_tokens",
            "Number of generation tokens processed.",
            s.generation_tokens_total,
        )
        yield family(CounterMetricFamily, "sglang:num_requests", "Number of requests processed.", self.num_success)
        yield self.ttft.family("sglang:time_to_first_token_seconds", "Histogram of time to first token.", labels)
        yield self.itl.family("sglang:inter_token_latency_seconds", "Histogram of inter-token latency.", labels)
        yield self.e2e.family("sglang:e2e_request_latency_seconds", "Histogram of e2e request latency.", labels)
        info = {"page_size": str(s.block_size), "num_pages": str(s.num_gpu_blocks)}
        cache = GaugeMetricFamily("sglang:cache_config_info", "Cache configuration.", labels=list(info))
        cache.add_metric(list(info.values()), 1.0)
        yield cache
