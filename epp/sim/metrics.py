"""``/metrics`` in vLLM's (or SGLang's) real names, types and labels, read from the engine at scrape time.

The vLLM page has vLLM 0.32's ``vllm:`` families with their labels and buckets, as captured from a
real engine (``tests/metrics/data/vllm_0_32.prom``): no ``gpu_*`` names, ``inter_token_latency_seconds``
(not ``time_per_output_token_seconds``), the ``prompt_tokens_cached*`` and ``*_by_source`` counters,
and ``cache_config_info`` with its 36 labels, unset values written ``"None"``. ``legacy`` adds the
names vLLM dropped (``gpu_cache_usage_perc``, ``gpu_prefix_cache_*``, ``time_per_output_token_seconds``).
``lora_requests_info`` appears only when adapters are served, as vLLM emits it only with LoRA enabled.
Histograms the simulator has no data for (queue, prefill and inference time, preemptions per
request, tokens per step) are present with vLLM's buckets and stay empty; ``prometheus_client``'s
``_created`` series are not reproduced.

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

from epp.engine.core import EngineCore, RequestOutput

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

    def __init__(
        self, core: EngineCore, *, engine: str, model_name: str, wall_time: Callable[[], float], legacy: bool = False
    ) -> None:
        if engine not in ("vllm", "sglang"):
            raise ValueError(f"unknown engine {engine!r}")
        self.core = core
        self.engine = engine
        self.model_name = model_name
        self.wall_time = wall_time
        self.legacy = legacy
        self.ttft = Histogram(TTFT_BUCKETS)
        self.itl = Histogram(ITL_BUCKETS)
        self.e2e = Histogram(E2E_BUCKETS)
        tokens = one_two_five(core.max_model_len)
        self.per_request = {name: Histogram(bounds) for name, bounds in (
            ("request_prompt_tokens", tokens), ("request_generation_tokens", tokens),
            ("request_max_num_generation_tokens", tokens), ("request_params_n", (1, 2, 5, 10, 20)),
            ("request_params_max_tokens", tokens), ("request_time_per_output_token_seconds", ITL_BUCKETS),
            ("request_queue_time_seconds", E2E_BUCKETS), ("request_inference_time_seconds", E2E_BUCKETS),
            ("request_prefill_time_seconds", E2E_BUCKETS), ("request_decode_time_seconds", E2E_BUCKETS),
            ("request_num_preemptions", (1, 2, 3, 4, 5, 10, 20)), ("request_prefill_kv_computed_tokens", tokens),
        )}  # fmt: skip
        self.iteration_tokens = Histogram(iteration_buckets(core.config.max_num_batched_tokens))
        self.num_success = 0
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(self)

    def request_finished(self, output: RequestOutput) -> None:
        """Observe a finished request in the per-request histograms the simulator can fill."""
        self.num_success += 1
        observe = {name: h.observe for name, h in self.per_request.items()}
        n = output.num_output_tokens
        observe["request_prompt_tokens"](output.num_prompt_tokens)
        observe["request_generation_tokens"](n)
        observe["request_max_num_generation_tokens"](n)  # the simulated model always runs to max_tokens
        observe["request_params_n"](1)
        observe["request_params_max_tokens"](n)
        observe["request_prefill_kv_computed_tokens"](output.num_prompt_tokens - max(output.num_cached_tokens, 0))
        if output.first_token_time is not None and output.finish_time is not None:
            decode = output.finish_time - output.first_token_time
            observe["request_decode_time_seconds"](decode)
            observe["request_time_per_output_token_seconds"](decode / (n - 1) if n > 1 else 0.0)

    def render(self) -> bytes:
        return generate_latest(self.registry)

    def collect(self) -> Iterator[Metric]:
        return self._vllm() if self.engine == "vllm" else self._sglang()

    def _vllm(self) -> Iterator[Metric]:
        s = self.core.stats()
        labels = {"engine": "0", "model_name": self.model_name}
        keys, values = list(labels), list(labels.values())

        def family(kind: type[GaugeMetricFamily] | type[CounterMetricFamily], name: str, doc: str,
                   by: str | None = None, **series: float) -> Metric:  # fmt: skip
            metric = kind(name, doc, labels=keys if by is None else [*keys, by])
            for label, value in series.items():
                metric.add_metric(values if by is None else [*values, label], value)
            return metric

        def gauge(name: str, doc: str, value: float) -> Metric:
            return family(GaugeMetricFamily, name, doc, value=value)

        def counter(name: str, doc: str, value: float) -> Metric:
            return family(CounterMetricFamily, name, doc, value=value)

        for what in ("flops", "read_bytes", "write_bytes"):
            yield counter(f"vllm:estimated_{what}_per_gpu", f"Estimated number of {what} per GPU (for MFU).", 0)
        yield gauge("vllm:num_requests_running", "Number of requests in model execution batches.", s.num_running)
        yield gauge("vllm:num_requests_waiting", "Number of requests waiting to be processed.", s.num_waiting)
        yield family(GaugeMetricFamily, "vllm:num_requests_waiting_by_reason", "Number of waiting requests by reason.",
                     "reason", capacity=s.num_waiting, deferred=0)  # fmt: skip
        yield family(GaugeMetricFamily, "vllm:engine_sleep_state", "Engine sleep state.", "sleep_state",
                     awake=1, weights_offloaded=0, discard_all=0)  # fmt: skip
        yield gauge("vllm:kv_cache_usage_perc", "KV-cache usage. 1 means 100 percent usage.", s.kv_usage)
        yield counter("vllm:prefix_cache_queries", "Prefix cache queries, in terms of number of queried tokens.",
                      s.prefix_cache_queries)  # fmt: skip
        yield counter("vllm:prefix_cache_hits", "Prefix cache hits, in terms of number of cached tokens.", s.prefix_cache_hits)
        for prefix in ("external_prefix", "mm"):
            yield counter(f"vllm:{prefix}_cache_queries", f"{prefix} cache queries.", 0)
            yield counter(f"vllm:{prefix}_cache_hits", f"{prefix} cache hits.", 0)
        yield counter("vllm:num_preemptions", "Cumulative number of preemption from the engine.", s.num_preemptions)
        yield counter("vllm:prompt_tokens", "Number of prefill tokens processed.", s.prompt_tokens_total)
        yield family(CounterMetricFamily, "vllm:prompt_tokens_by_source", "Number of prompt tokens by source.", "source",
                     local_compute=s.prompt_tokens_total - s.prefix_cache_hits, local_cache_hit=s.prefix_cache_hits,
                     external_kv_transfer=0)  # fmt: skip
        yield counter("vllm:prompt_tokens_cached", "Number of cached prompt tokens (local + external).", s.prefix_cache_hits)
        yield family(CounterMetricFamily, "vllm:prompt_tokens_cached_by_source",
                     "Prefix-cache hit tokens by the cache tier that supplied them.", "source",
                     device=s.prefix_cache_hits, host=0, p2p=0, disk=0, external_unspecified=0)  # fmt: skip
        yield counter("vllm:generation_tokens", "Number of generation tokens processed.", s.generation_tokens_total)
        success = CounterMetricFamily("vllm:request_success", "Count of successfully processed requests.",
                                      labels=["engine", "finished_reason", "model_name"])  # fmt: skip
        for reason in ("stop", "length", "abort", "error", "repetition"):
            success.add_metric(["0", reason, self.model_name], self.num_success if reason == "length" else 0)
        yield success
        rejections = CounterMetricFamily("vllm:admission_rejections",
                                         "Number of admission attempts rejected by a queue limit, by reason.",
                                         labels=["model_name", "reason"])  # fmt: skip
        for reason in ("max_num_queued_reqs", "max_num_queued_tokens"):
            rejections.add_metric([self.model_name, reason], 0)
        yield rejections
        hist = self.per_request
        for name in ("request_prompt_tokens", "request_generation_tokens"):
            yield hist[name].family(f"vllm:{name}", "Number of tokens processed.", labels)
        yield self.iteration_tokens.family("vllm:iteration_tokens_total", "Histogram of number of tokens per engine_step.", labels)
        for name in ("request_max_num_generation_tokens", "request_params_n", "request_params_max_tokens"):
            yield hist[name].family(f"vllm:{name}", f"Histogram of {name}.", labels)
        yield self.ttft.family("vllm:time_to_first_token_seconds", "Histogram of time to first token in seconds.", labels)
        yield self.itl.family("vllm:inter_token_latency_seconds", "Histogram of inter-token latency in seconds.", labels)
        yield hist["request_time_per_output_token_seconds"].family(
            "vllm:request_time_per_output_token_seconds", "Histogram of time_per_output_token_seconds per request.", labels
        )
        yield self.e2e.family("vllm:e2e_request_latency_seconds", "Histogram of e2e request latency in seconds.", labels)
        for name in ("request_queue_time_seconds", "request_inference_time_seconds", "request_prefill_time_seconds",
                     "request_decode_time_seconds", "request_num_preemptions", "request_prefill_kv_computed_tokens"):  # fmt: skip
            yield hist[name].family(f"vllm:{name}", f"Histogram of {name}.", labels)
        if self.legacy:
            yield gauge("vllm:gpu_cache_usage_perc", "GPU KV-cache usage (deprecated name).", s.kv_usage)
            yield counter("vllm:gpu_prefix_cache_queries", "Prefix cache queries (deprecated name).", s.prefix_cache_queries)
            yield counter("vllm:gpu_prefix_cache_hits", "Prefix cache hits (deprecated name).", s.prefix_cache_hits)
            yield self.itl.family("vllm:time_per_output_token_seconds", "Deprecated: inter-token latency.", labels)
        if self.core.config.lora_adapters:
            lora = GaugeMetricFamily("vllm:lora_requests_info", "Running stats on lora requests.",
                                     labels=["max_lora", "waiting_lora_adapters", "running_lora_adapters"])  # fmt: skip
            lora.add_metric(
                [str(s.max_loras), ",".join(sorted(s.waiting_loras)), ",".join(sorted(s.running_loras))], self.wall_time()
            )
            yield lora
        info = cache_config_labels(self.core, s.block_size, s.num_gpu_blocks)
        cache = GaugeMetricFamily("vllm:cache_config_info", "Information of the LLMEngine CacheConfig", labels=list(info))
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
        yield family(GaugeMetricFamily, "sglang:token_usage", "The token usage.", s.kv_usage)
        used = round(s.kv_usage * s.num_gpu_blocks * s.block_size)
        yield family(GaugeMetricFamily, "sglang:num_used_tokens", "The number of used tokens.", used)
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
        cached = CounterMetricFamily("sglang:cached_tokens", "Number of cached prompt tokens by source (device/host/storage).",
                                     labels=[*keys, "cache_source"])  # fmt: skip
        for source in ("device", "host", "storage"):
            cached.add_metric([*values, source], s.prefix_cache_hits if source == "device" else 0)
        yield cached
        yield family(CounterMetricFamily, "sglang:num_requests", "Number of requests processed.", self.num_success)
        yield self.ttft.family("sglang:time_to_first_token_seconds", "Histogram of time to first token.", labels)
        yield self.itl.family("sglang:inter_token_latency_seconds", "Histogram of inter-token latency.", labels)
        yield self.e2e.family("sglang:e2e_request_latency_seconds", "Histogram of e2e request latency.", labels)
        info = {"page_size": str(s.block_size), "num_pages": str(s.num_gpu_blocks)}
        cache = GaugeMetricFamily("sglang:cache_config_info", "Cache configuration.", labels=list(info))
        cache.add_metric(list(info.values()), 1.0)
        yield cache


def one_two_five(limit: int) -> tuple[float, ...]:
    """vLLM's ``build_1_2_5_buckets``: 1, 2, 5, 10, 20, 50, … up to ``limit`` (token histograms)."""
    out: list[float] = []
    exponent = 0
    while True:
        for mantissa in (1, 2, 5):
            value = mantissa * 10**exponent
            if value > limit:
                return tuple(out)
            out.append(float(value))
        exponent += 1


def iteration_buckets(max_num_batched_tokens: int) -> tuple[float, ...]:
    """vLLM's tokens-per-step buckets: 1, 8, then powers of two from 16 up to the step's token budget."""
    out = [1.0, 8.0]
    value = 16
    while value <= max_num_batched_tokens:
        out.append(float(value))
        value *= 2
    return tuple(out)


def cache_config_labels(core: EngineCore, block_size: int, num_gpu_blocks: int) -> dict[str, str]:
    """``vllm:cache_config_info``'s 36 labels as vLLM 0.32 writes them (sorted; unset values ``"None"``),
    filled from the simulated engine where it has the value and otherwise vLLM's defaults."""
    cfg = core.config
    tokens = num_gpu_blocks * block_size
    return {
        "_block_size_resolved": "True", "block_size": str(block_size), "cache_dtype": "auto",
        "cache_hit_alignment_tokens": "None", "effective_attention_block_size": str(block_size),
        "enable_mamba_shared_prefix_checkpoint": "False", "enable_prefix_caching": str(cfg.enable_prefix_caching),
        "engine": "0", "gpu_memory_utilization": str(cfg.gpu_memory_utilization), "hash_block_size": "None",
        "is_attention_free": "False", "kv_cache_dtype_skip_layers": "[]", "kv_cache_layout": "None",
        "kv_cache_max_concurrency": str(tokens / core.max_model_len), "kv_cache_memory_bytes": "None",
        "kv_cache_size_tokens": str(tokens), "kv_offloading_backend": "native", "kv_offloading_size": "None",
        "kv_sharing_fast_prefill": "False", "mamba_block_size": "None", "mamba_cache_dtype": "auto",
        "mamba_cache_mode": "none", "mamba_page_size_padded": "None", "mamba_ssm_cache_dtype": "float32",
        "num_cpu_blocks": "None", "num_gpu_blocks": str(num_gpu_blocks), "num_gpu_blocks_override": "None",
        "prefix_cache_retention_interval": "0", "prefix_caching_hash_algo": "sha256", "prefix_match_unit": "None",
        "replayssm_buffer_len": "16", "skip_page_size_padded": "None", "sliding_window": "None",
        "swa_bounded_replay": "True", "use_kda_recoverssm": "False", "use_replayssm": "False",
        "user_specified_block_size": "False",
    }  # fmt: skip
