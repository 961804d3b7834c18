"""Which ``/metrics`` series each model-server kind uses for queue, running, KV usage, LoRA and cache shape.

The table follows llm-d's default engine configs (the reference picker's ``core-metrics-extractor``),
keyed by the endpoint's ``llm-d.ai/engine-type`` label. One addition: vLLM's pre-v0.10 name
``vllm:gpu_cache_usage_perc`` is kept as a KV-usage fallback when ``vllm:kv_cache_usage_perc`` is
absent. GIE dropped it in Nov 2025; we keep it because older vLLM images are still deployed and the
fallback only applies when the current name is missing, so it cannot shadow a current server.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from types import MappingProxyType

from epp.datastore.endpoint import DEFAULT_ENGINE


@dataclass(frozen=True, slots=True)
class Selector:
    """``name{label="value",…}``: the series of family ``name`` whose labels include all of ``labels``."""

    name: str
    labels: Mapping[str, str] = field(default_factory=dict)

    def matches(self, sample_labels: Mapping[str, str]) -> bool:
        return all(sample_labels.get(k) == v for k, v in self.labels.items())


@dataclass(frozen=True, slots=True)
class LabelInfo:
    """An info-style gauge whose *labels* carry integers (vLLM ``cache_config_info`` block_size …)."""

    name: str
    block_size_label: str
    num_blocks_label: str


@dataclass(frozen=True, slots=True)
class EngineSpec:
    """How one engine kind exposes the fields of ``EndpointMetrics``.

    ``queue``, ``running`` and the first present of ``kv`` are required: a scrape without them is
    an error. Everything else is optional (vLLM emits ``lora_requests_info`` only once LoRA is
    enabled). Block size and count come from ``cache_info`` labels, else from plain gauges.
    """

    queue: Selector
    running: Selector
    kv: tuple[Selector, ...] = ()
    lora: str | None = None
    cache_info: LabelInfo | None = None
    block_size: Selector | None = None
    num_blocks: Selector | None = None
    prompt_tokens: tuple[Selector, ...] = ()
    cached_tokens: tuple[Selector, ...] = ()  # the first present wins, as for ``kv``

    @property
    def family_names(self) -> frozenset[str]:
        """Every sample name this spec reads: what the pre-filter keeps."""
        names = {self.queue.name, self.running.name, *(s.name for s in (*self.kv, *self.prompt_tokens, *self.cached_tokens))}
        if self.lora:
            names.add(self.lora)
        if self.cache_info:
            names.add(self.cache_info.name)
        for gauge in (self.block_size, self.num_blocks):
            if gauge:
                names.add(gauge.name)
        return frozenset(names)


def _trt_block(kind: str) -> Selector:
    return Selector("nv_trt_llm_kv_cache_block_metrics", {"kv_cache_block_type": kind})


ENGINES: Mapping[str, EngineSpec] = MappingProxyType(
    {
        "vllm": EngineSpec(
            queue=Selector("vllm:num_requests_waiting"),
            running=Selector("vllm:num_requests_running"),
            kv=(Selector("vllm:kv_cache_usage_perc"), Selector("vllm:gpu_cache_usage_perc")),
            lora="vllm:lora_requests_info",
            cache_info=LabelInfo("vllm:cache_config_info", "block_size", "num_gpu_blocks"),
            # vLLM 0.32 counts cached prompt tokens itself; older releases only as prefix-cache hits.
            prompt_tokens=(Selector("vllm:prompt_tokens_total"),),
            cached_tokens=(Selector("vllm:prompt_tokens_cached_total"), Selector("vllm:prefix_cache_hits_total"),
                           Selector("vllm:gpu_prefix_cache_hits_total")),
        ),
        "sglang": EngineSpec(
            queue=Selector("sglang:num_queue_reqs"),
            running=Selector("sglang:num_running_reqs"),
            kv=(Selector("sglang:token_usage"),),
            # SGLang ≤ 0.5.9 puts page size/count on an info gauge; newer releases use plain gauges.
            cache_info=LabelInfo("sglang:cache_config_info", "page_size", "num_pages"),
            block_size=Selector("sglang:page_size"),
            num_blocks=Selector("sglang:num_pages"),
            prompt_tokens=(Selector("sglang:prompt_tokens_total"),),
            cached_tokens=(Selector("sglang:cached_tokens_total", {"cache_source": "device"}),
                           Selector("sglang:cached_tokens_total")),
        ),
        "trtllm-serve": EngineSpec(
            queue=Selector("trtllm_num_requests_waiting"),
            running=Selector("trtllm_num_requests_running"),
            kv=(Selector("trtllm_kv_cache_utilization"),),
            block_size=Selector("trtllm_kv_cache_tokens_per_block"),
            num_blocks=Selector("trtllm_kv_cache_max_blocks"),
        ),
        "triton-tensorrt-llm": EngineSpec(
            queue=Selector("nv_trt_llm_request_metrics", {"request_type": "waiting"}),
            running=Selector("nv_trt_llm_request_metrics", {"request_type": "scheduled"}),
            kv=(_trt_block("fraction"),),
            block_size=_trt_block("tokens_per"),
            num_blocks=_trt_block("max"),
        ),
        # Triton without the TRT-LLM backend: no KV cache metrics; "running" is the reference's choice.
        "triton": EngineSpec(
            queue=Selector("nv_inference_pending_request_count"),
            running=Selector("nv_inference_exec_count"),
        ),
    }
)


def engine_kind(engine: str) -> str:
    """The ``ENGINES`` key for an engine label: unknown kinds fall back to vLLM, as the reference does."""
    return engine if engine in ENGINES else DEFAULT_ENGINE


def spec_for(engine: str) -> EngineSpec:
    return ENGINES[engine_kind(engine)]


def parse_selector(text: str) -> Selector | None:
    """GIE's metric flag syntax, ``name`` or ``name{label=value,...}``, as its chart renders it: the whole
    value and each label value may be quoted. Empty (``""``) is None: the metric is not read."""
    spec = text.strip().strip("'\"").strip()
    if not spec:
        return None
    name, brace, rest = spec.partition("{")
    labels: dict[str, str] = {}
    if brace:
        if not rest.endswith("}"):
            raise ValueError(f"metric {text!r}: labels must end with '}}'")
        for pair in filter(None, (p.strip() for p in rest[:-1].split(","))):
            key, eq, value = pair.partition("=")
            if not eq or not key.strip():
                raise ValueError(f"metric {text!r}: label {pair!r} is not key=value")
            labels[key.strip()] = value.strip().strip("'\"")
    name = name.strip()
    if not name or "}" in name:
        raise ValueError(f"metric {text!r} has no name")
    return Selector(name, labels)


def with_legacy_names(
    base: EngineSpec, *, queue: Selector | None = None, running: Selector | None = None, kv: Selector | None = None,
    lora: Selector | None | bool = False, cache_info: Selector | None | bool = False,
) -> EngineSpec:
    """``base`` with GIE's metric-name flags applied (``--total-queued-requests-metric`` …): given
    selectors replace the spec's; ``lora``/``cache_info`` None disable them (an empty flag value),
    False leaves them alone. The cache info gauge keeps vLLM's label names (block_size, num_gpu_blocks)."""
    spec = base
    if queue is not None:
        spec = replace(spec, queue=queue)
    if running is not None:
        spec = replace(spec, running=running)
    if kv is not None:
        spec = replace(spec, kv=(kv,))
    if lora is not False:
        spec = replace(spec, lora=lora.name if isinstance(lora, Selector) else None)
    if cache_info is not False:
        info = LabelInfo(cache_info.name, "block_size", "num_gpu_blocks") if isinstance(cache_info, Selector) else None
        spec = replace(spec, cache_info=info)
    return spec
