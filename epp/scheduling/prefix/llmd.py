"""llm-d's precise-prefix configuration forms, read unchanged and mapped onto epp's precise producer.

llm-d configures tokenization and the KV-event index with nested objects (llm-d-router's
``precise-prefix-cache-producer`` / deprecated ``precise-prefix-cache-scorer``, llm-d-kv-cache's
``kvcache.Config``, ``tokenization.Config``, ``kvevents.Config``), and the ``token-producer`` plugin
(legacy name ``tokenizer``). Field names are llm-d's; what each becomes in epp:

* ``tokenProcessorConfig``: ``blockSize``/``blockSizeTokens`` → ``blockSizeTokens`` (the engine's
  scraped block size still wins while ``autoTune`` is on); ``hashSeed``/``hashAlgorithm`` are accepted
  and unused — epp's keys are internal, recomputed from the events' token ids;
* ``indexerConfig.tokenizersPoolConfig``: ``modelName`` pins the tokenizer's model; ``local``
  (``modelTokenizerMap``, ``autoDiscoveryDir``), ``hf`` (``tokenizersCacheDir``, ``huggingFaceToken``,
  ``enabled`` = may fetch from the hub, in the background) say where its files are; ``uds`` (a
  tokenizer sidecar's socket) is not called: epp loads the same files in-process (one warning);
  ``workersCount`` is unused (encoding runs in-process, pieces cached);
* ``indexerConfig.kvBlockIndexConfig.inMemoryConfig.size`` → ``maxBlocksPerEndpoint``; metrics
  switches are unused (epp always exports its series); ``redisConfig`` and ``kvCacheBackendConfigs``
  are accepted and unused (epp shares its learned view through ``redisUrl``; all media count alike);
* ``kvEventsConfig``: ``discoverPods`` (llm-d's default: true) → ``mode: connect`` on
  ``podDiscoveryConfig.socketPort`` (5557); a ``zmqEndpoint`` without ``discoverPods`` (the centralized
  form) or ``discoverPods: false`` → ``mode: bind`` on it; ``topicFilter`` when given (else epp's,
  which in connect mode also takes llm-d's ``kv@`` topics); ``concurrency``, ``engineType``,
  ``tracing`` are unused (epp decodes vLLM and SGLang alike);
* ``speculativeIndexing``/``speculativeTTL``: unused — epp always learns its own picks in the fallback.

``sessionManager`` (llm-d's session-cache lookup) has no counterpart and is an error.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from epp.plugin.typed_name import TypedName
from epp.plugin.params import Duration, ParamError, decode_params
from epp.plugin.registry import Factory, PluginHandle
from epp.tokenizer.source import ModelTokenizers, resolve_model_dir

log = logging.getLogger(__name__)

NESTED_KEYS = frozenset({"tokenProcessorConfig", "indexerConfig", "kvEventsConfig", "speculativeIndexing",
                         "speculativeTTL", "sessionManager"})  # fmt: skip
LLMD_DEFAULT_ENDPOINT = "tcp://*:5557"
TOKEN_PRODUCER = "token-producer"
LEGACY_TOKEN_PRODUCER = "tokenizer"


@dataclass(frozen=True, slots=True)
class TokenProcessorConfig:
    block_size: int | None = None
    block_size_tokens: int | None = None
    hash_seed: str | None = None
    hash_algorithm: str | None = None


@dataclass(frozen=True, slots=True)
class LocalTokenizerConfig:
    auto_discovery_dir: str | None = None
    auto_discovery_tokenizer_file_name: str | None = None
    model_tokenizer_map: dict[str, str] | None = None


@dataclass(frozen=True, slots=True)
class HFTokenizerConfig:
    enabled: bool = True
    hugging_face_token: str | None = None
    tokenizers_cache_dir: str | None = None
    model_paths: dict[str, str] | None = None


@dataclass(frozen=True, slots=True)
class UdsTokenizerConfig:
    socket_file: str = ""
    use_tcp: bool = False


@dataclass(frozen=True, slots=True)
class TokenizersPoolConfig:
    model_name: str | None = None
    workers_count: int | None = None
    min_prefix_overlap_ratio: float | None = None
    local: LocalTokenizerConfig | None = None
    hf: HFTokenizerConfig | None = None
    uds: UdsTokenizerConfig | None = None


@dataclass(frozen=True, slots=True)
class InMemoryConfig:
    size: int | None = None
    pod_cache_size: int | None = None


@dataclass(frozen=True, slots=True)
class KVBlockIndexConfig:
    enable_metrics: bool | None = None
    metrics_logging_interval: Duration | None = None
    in_memory_config: InMemoryConfig | None = None
    cost_aware_memory_config: Mapping[str, Any] | None = None
    redis_config: Mapping[str, Any] | None = None
    valkey_config: Mapping[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class IndexerConfig:
    tokenizers_pool_config: TokenizersPoolConfig | None = None
    kv_block_index_config: KVBlockIndexConfig | None = None
    token_processor_config: TokenProcessorConfig | None = None  # where llm-d v0.5 put it
    speculative_indexing: bool | None = None


@dataclass(frozen=True, slots=True)
class PodDiscoveryConfig:
    socket_port: int = 5557
    pod_label_selector: str | None = None
    pod_namespace: str | None = None


@dataclass(frozen=True, slots=True)
class KVEventsConfig:
    zmq_endpoint: str | None = None
    topic_filter: str | None = None
    concurrency: int | None = None
    discover_pods: bool | None = None
    pod_discovery_config: PodDiscoveryConfig | None = None
    engine_type: str | None = None
    tracing: bool | None = None


@dataclass(frozen=True, slots=True)
class LlmdPreciseParams:
    token_processor_config: TokenProcessorConfig | None = None
    indexer_config: IndexerConfig | None = None
    kv_events_config: KVEventsConfig | None = None
    speculative_indexing: bool | None = None
    speculative_ttl: Duration | None = None
    session_manager: str | None = None

    def __post_init__(self) -> None:
        if self.session_manager is not None:
            raise ParamError("sessionManager", "llm-d's session-cache lookup is not supported by epp")


def split_llmd(params: Mapping[str, Any]) -> tuple[dict[str, Any], LlmdPreciseParams | None]:
    """epp's flat precise-producer parameters from ``params``, with llm-d's nested ones mapped in
    (explicit flat keys win), and the decoded llm-d part (None when there is none)."""
    flat = {k: v for k, v in params.items() if k not in NESTED_KEYS}
    nested = {k: v for k, v in params.items() if k in NESTED_KEYS}
    if not nested:
        return flat, None
    indexer = nested.get("indexerConfig")
    if isinstance(indexer, Mapping) and "kvCacheBackendConfigs" in indexer:  # a list of media weights: unused
        if not isinstance(indexer["kvCacheBackendConfigs"], list):
            raise ParamError("indexerConfig.kvCacheBackendConfigs", "must be a list")
        nested["indexerConfig"] = {k: v for k, v in indexer.items() if k != "kvCacheBackendConfigs"}
    llmd = decode_params(LlmdPreciseParams, nested)
    mapped: dict[str, Any] = {}
    processor = llmd.token_processor_config or (llmd.indexer_config.token_processor_config if llmd.indexer_config else None)
    if processor is not None:
        size = processor.block_size_tokens or processor.block_size
        if size is not None:
            mapped["blockSizeTokens"] = size
    index = llmd.indexer_config.kv_block_index_config if llmd.indexer_config else None
    if index is not None and index.in_memory_config is not None and index.in_memory_config.size:
        mapped["maxBlocksPerEndpoint"] = index.in_memory_config.size
    events = llmd.kv_events_config
    if events is not None:
        if events.discover_pods or (events.discover_pods is None and events.zmq_endpoint is None):
            mapped["mode"] = "connect"
            mapped["kvEventsPort"] = (events.pod_discovery_config or PodDiscoveryConfig()).socket_port
        else:
            mapped["mode"] = "bind"
            mapped["bindEndpoint"] = (events.zmq_endpoint or LLMD_DEFAULT_ENDPOINT).replace("0.0.0.0", "*")
        if events.topic_filter is not None:
            mapped["topicFilter"] = events.topic_filter
    return {**mapped, **flat}, llmd


def pool_tokenizers(pool: TokenizersPoolConfig) -> ModelTokenizers:
    """The tokenizer source llm-d's ``tokenizersPoolConfig`` describes (see the module docstring)."""
    local = pool.local or LocalTokenizerConfig()
    hf = pool.hf or HFTokenizerConfig()
    if pool.uds is not None and pool.uds.socket_file:
        _warn_sidecar(f"the tokenizer sidecar at {pool.uds.socket_file}")
    model_map = {**(hf.model_paths or {}), **(local.model_tokenizer_map or {})}
    resolve = functools.partial(
        resolve_model_dir, model_map=model_map, discovery_dir=local.auto_discovery_dir,
        cache_dir=hf.tokenizers_cache_dir, token=hf.hugging_face_token,
    )  # fmt: skip
    return ModelTokenizers(fallback=None, model=pool.model_name or None, resolve=resolve, allow_download=hf.enabled)


def _warn_sidecar(what: str) -> None:
    log.warning(
        "epp does not call %s: it loads the same model's tokenizer files in-process (the same token ids"
        " without a round trip on the pick path) — from a local folder, LOCAL_TOKENIZER_DIR, the Hugging Face"
        " cache, or the hub in the background unless HF_HUB_OFFLINE is set; until they load, requests are"
        " matched in the approximate index.",
        what,
    )


@dataclass(frozen=True, slots=True)
class VllmRenderConfig:
    url: str | None = None
    http: str | None = None  # the older spelling of ``url`` (llm-d-router's multimodal README still shows it)
    timeout: Duration | None = None
    mm_timeout: Duration | None = None
    messages_render_mode: str | None = None
    responses_render_mode: str | None = None
    prefill_only: bool | None = None
    omit_mm_kwargs: bool | None = None
    endpoint_discovery: Mapping[str, Any] | None = None
    ca_cert_path: str | None = None
    client_cert_path: str | None = None
    client_key_path: str | None = None
    insecure_skip_verify: bool | None = None


@dataclass(frozen=True, slots=True)
class TokenProducerParams:
    model_name: str = ""
    uds_tokenizer_config: UdsTokenizerConfig | None = None
    vllm: VllmRenderConfig | None = None
    estimate: Mapping[str, Any] | None = None

    def __post_init__(self) -> None:
        if not self.model_name and self.estimate is None:  # estimate mode counts tokens without a tokenizer
            raise ParamError("modelName", "must be specified")
        if self.vllm is not None and self.uds_tokenizer_config is not None and self.uds_tokenizer_config.socket_file:
            raise ParamError("", "only one of 'udsTokenizerConfig' or 'vllm' may be set")


class TokenProducer:
    """llm-d's ``token-producer`` (``tokenizer``): the token ids of each request's prompt, for the
    precise producer. epp encodes in-process with ``modelName``'s tokenizer files."""

    def __init__(self, name: str, plugin_type: str, tokenizers: ModelTokenizers) -> None:
        self.typed_name = TypedName(plugin_type, name)
        self.tokenizers = tokenizers


def token_producer_factory(plugin_type: str) -> Factory:
    """The registry factory of ``plugin_type`` (``token-producer`` or its legacy name)."""

    def factory(name: str, params: Mapping[str, Any], handle: PluginHandle) -> TokenProducer:
        p = decode_params(TokenProducerParams, params)
        if p.uds_tokenizer_config is not None and p.uds_tokenizer_config.socket_file:
            _warn_sidecar(f"the tokenizer sidecar at {p.uds_tokenizer_config.socket_file}")
        elif p.vllm is not None or p.uds_tokenizer_config is None:  # llm-d's default backend is vLLM render
            _warn_sidecar(f"vLLM's render endpoint at {(p.vllm and (p.vllm.url or p.vllm.http)) or 'http://localhost:8000'}")
        if plugin_type == LEGACY_TOKEN_PRODUCER:
            log.info("plugin type %r is deprecated in llm-d; %r is its current name", LEGACY_TOKEN_PRODUCER, TOKEN_PRODUCER)
        return TokenProducer(name, plugin_type, ModelTokenizers(fallback=None, model=p.model_name or None, allow_download=True))

    return factory
