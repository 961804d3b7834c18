"""``precise-prefix-cache-producer``: prefix matches from what engines report in KV-cache events.

The same contract as ``approx-prefix-cache-producer`` (it is one, so ``prefix-cache-scorer`` reads it
through ``prefixMatchInfoProducerName: <this plugin's name>``, as in llm-d), with four differences:

* prompts are hashed as the engine's token blocks (``tokens.engine_block_hashes``) with the served
  model's own tokenizer and chat template (``tokenizer``, default ``auto``: found from the request's
  model name as the engine finds it, see ``tokens``); while a model's tokenizer is loading its requests
  are matched in the approximate fallback. A prompt is tokenized on the pick path only while some
  endpoint holds all its blocks so far (``tokens.engine_block_stream``); the rest is hashed at its
  first response, when the fallback learns it (the engine holds it only then, too); while serving,
  that encoding runs on the data layer's worker thread, not the event loop (``learn_tail``);
* the index is a ``PreciseIndex`` fed by the data layer's KV-event subscriber, falling back per endpoint to an
  approximate ``BlockIndex`` learned from picks (``lruCapacityPerServer``) while that endpoint's
  feed is not live;
* with ``redisUrl`` the learned part is shared by all replicas (a ``ReplicatedPrefixIndex``, which the
  data layer replicates through Redis);
* an endpoint's feed is trusted, per prompt kind (chat, completion), only once its engine reports
  blocks of prompts of that kind epp routed there (``PreciseIndex``'s key agreement): the producer
  reports each pick with its kind, first response bytes and end (``routed``/``responded``/
  ``finished``), matches each request against the views agreed for its kind, and ``view_is_exact``
  says which endpoints are matched from engine events (for some kind).

Parameters: ``blockSizeTokens`` 16, ``autoTune`` true, ``maxPrefixBlocksToMatch`` 256 (or
``maxPrefixTokensToMatch``), ``lruCapacityPerServer`` 31250; ``mode`` ``connect`` (one SUB per
endpoint at ``<address>:kvEventsPort``, 5557, plus the endpoint's data-parallel rank unless
``kvEventsRankOffset`` is false; an endpoint's ``epp/kv-events-port`` label overrides the port) or
``bind`` (engines connect to ``bindEndpoint``, ``tcp://*:5557``); ``kvEventsReplayPort`` none (vLLM's
``replay_endpoint`` port, e.g. 5558: backfill on connect, see ``epp.datalayer.kv_events``); ``topicFilter``
(connect: every topic, vLLM's default is empty; bind: ``kv@``); ``tokenizer`` ``auto`` (or the
``token-producer`` plugin's, or llm-d's ``indexerConfig.tokenizersPoolConfig``: see ``llmd``, whose
nested ``tokenProcessorConfig`` / ``indexerConfig`` / ``kvEventsConfig`` forms are accepted too);
``eventTimeout`` 5s, ``resyncWindow`` 30s, ``youngViewWindow`` 5m (how long a view that joined a running
engine also takes learned matches), ``maxBlocksPerEndpoint`` 1000000; ``redisUrl`` none, ``redisStream``
``epp:prefix-index``, ``redisMaxLen`` 20000. Series (the data layer's): the subscriber's, and
``epp_kv_events_feed_state{endpoint,state}`` (1 for each endpoint's current ``FeedState``) and
``epp_kv_events_key_agreement{endpoint,kind,state}`` (per prompt kind: agreed, unverified, mismatch).

The plugin owns no socket and no task: its factory records a ``KVEventFeed`` (the subscription's
settings and the ``PreciseIndex`` it feeds), with ``redisUrl`` a ``SharedIndexFeed`` for the learned
part, and its tokenizer source on the handle's ``DataNeeds``; the data layer (``epp.datalayer``)
opens, exports and stops them, started by whoever runs the picker (``epp serve``), and offline replay
feeds the same index from its simulated engines.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from epp.contracts.datalayer import DEFAULT_KV_EVENTS_PORT as DEFAULT_PORT
from epp.contracts.datalayer import KVEventFeed, SharedIndexFeed, SubscriberMode
from epp.contracts.kv_events import COMPLETION, FeedState
from epp.datastore import EndpointState
from epp.request import LLMRequest
from epp.plugin.typed_name import TypedName
from epp.scheduling.framework import CycleState, SchedulingResult
from epp.plugin.params import Duration, ParamError, decode_params
from epp.scheduling.prefix.hashing import prompt_block_hashes
from epp.scheduling.prefix.index import BlockIndex
from epp.scheduling.prefix.llmd import (
    LEGACY_TOKEN_PRODUCER,
    TOKEN_PRODUCER,
    TokenizersPoolConfig,
    TokenProducer,
    pool_tokenizers,
    split_llmd,
)
from epp.scheduling.prefix.precise import PreciseIndex
from epp.scheduling.prefix.producer import ApproxPrefixCacheProducer, HashTail, PrefixIndexParams, PrefixMatch, prefill_target
from epp.scheduling.prefix.protocol import PrefixIndex
from epp.scheduling.prefix.replicated import ReplicatedPrefixIndex
from epp.scheduling.prefix.tokens import engine_block_stream, prompt_kind
from epp.tokenizer.load import AUTO_TOKENIZER, SIM, load_tokenizers
from epp.tokenizer.protocol import TokenizerSource
from epp.plugin.registry import PluginHandle
from epp.tokenizer.protocol import BackgroundLoading

PRECISE_PREFIX_CACHE_PRODUCER = "precise-prefix-cache-producer"


@dataclass(frozen=True, slots=True)
class PrecisePrefixParams:
    auto_tune: bool = True
    block_size_tokens: int = 16
    max_prefix_blocks_to_match: int = 256
    max_prefix_tokens_to_match: int | None = None
    lru_capacity_per_server: int = 31250
    mode: str = SubscriberMode.CONNECT.value
    kv_events_port: int = DEFAULT_PORT
    kv_events_rank_offset: bool = True
    kv_events_replay_port: int | None = None
    bind_endpoint: str = f"tcp://*:{DEFAULT_PORT}"
    topic_filter: str | None = None
    tokenizer: str | None = None  # None: the token-producer's, llm-d's pool config's, else ``auto``
    event_timeout: Duration = Duration(5.0)
    resync_window: Duration = Duration(30.0)
    young_view_window: Duration = Duration(300.0)
    max_blocks_per_endpoint: int = 1_000_000
    redis_url: str | None = None
    redis_stream: str = "epp:prefix-index"
    redis_max_len: int = 20_000

    def __post_init__(self) -> None:
        modes = [m.value for m in SubscriberMode]
        if self.mode not in modes:
            raise ParamError("mode", f"must be one of {', '.join(modes)}")
        for key, port in (("kvEventsPort", self.kv_events_port), ("kvEventsReplayPort", self.kv_events_replay_port)):
            if port is not None and not 0 < port < 65536:
                raise ParamError(key, "must be a TCP port")
        if self.event_timeout <= 0:
            raise ParamError("eventTimeout", "must be positive")
        for key, value in (("maxBlocksPerEndpoint", self.max_blocks_per_endpoint), ("redisMaxLen", self.redis_max_len)):
            if value < 1:
                raise ParamError(key, "must be at least 1")

    def index_params(self) -> PrefixIndexParams:
        return PrefixIndexParams(
            auto_tune=self.auto_tune, block_size_tokens=self.block_size_tokens,
            max_prefix_blocks_to_match=self.max_prefix_blocks_to_match,
            max_prefix_tokens_to_match=self.max_prefix_tokens_to_match,
            lru_capacity_per_server=self.lru_capacity_per_server,
        )  # fmt: skip


class PrecisePrefixCacheProducer(ApproxPrefixCacheProducer):
    def __init__(
        self, name: str, params: PrecisePrefixParams, precise: PreciseIndex, tokenizers: TokenizerSource,
        index: PrefixIndex | None = None,
    ) -> None:
        super().__init__(name, params.index_params(), index or precise)
        self.typed_name = TypedName(PRECISE_PREFIX_CACHE_PRODUCER, name)
        self.precise = precise
        self.precise_params = params
        self.tokenizers = tokenizers
        self._kind: str | None = None  # of the latest prompt_hashes: its keys' prompt kind, None for byte hashes

    def _hashes(self, request: LLMRequest, endpoints: list[EndpointState]) -> PrefixMatch:
        """The prompt's engine keys, tagged with its kind; while the model's tokenizer is not available,
        approximate byte hashes, tagged with no kind (matched in the fallback only)."""
        info = super()._hashes(request, endpoints)
        info.kind = self._kind
        return info

    def prompt_blocks(self, request: LLMRequest, block_tokens: int, max_blocks: int) -> tuple[list[int], HashTail | None]:
        """Engine keys, computed only as far as lookups need them where the tokenizer streams
        (``tokens.engine_block_stream``); byte hashes while the model's tokenizer is not available."""
        tokenizer = SIM if request.prompt_token_ids is not None else self.tokenizers.for_model(request.target_model)
        if tokenizer is None:
            self._kind = None
            return prompt_block_hashes(request, block_tokens, max_blocks, self.chains), None
        self._kind = prompt_kind(request)
        return engine_block_stream(request, tokenizer, block_tokens, max_blocks, self.chains)

    def prompt_hashes(self, request: LLMRequest, block_tokens: int, max_blocks: int) -> list[int]:
        """All of ``prompt_blocks``' keys."""
        hashes, tail = self.prompt_blocks(request, block_tokens, max_blocks)
        if tail is None:
            return hashes
        info = PrefixMatch(hashes, block_tokens, tail=tail)
        info.finish()
        return info.hashes

    def lookup(self, info: PrefixMatch, names: list[str]) -> list[int]:
        if info.kind is None:
            return self.precise.fallback.match(info.hashes, names)
        return self.precise.match(info.hashes, names, info.kind)

    def match(self, cycle: CycleState, request: LLMRequest, endpoints: list[EndpointState]) -> tuple[PrefixMatch, list[int]]:
        """``ApproxPrefixCacheProducer.match``, after telling the index which model each candidate
        serves where its events still wait for one (vLLM's empty topic names none)."""
        unseeded = self.precise.unseeded
        if unseeded:
            for state in endpoints:
                name = state.endpoint.name
                if name in unseeded and (model := served_model(state, request)) is not None:
                    self.precise.seed(name, model)
        return super().match(cycle, request, endpoints)

    def view_is_exact(self, endpoint_name: str) -> bool:
        """True while the endpoint's matches come from its engine's events (feed ``LIVE``: connected,
        in sequence, answering, keys agreeing); else they come from the approximate fallback."""
        return self.precise.feed_state(endpoint_name) is FeedState.LIVE

    def pre_request(self, cycle: CycleState, request: LLMRequest, result: SchedulingResult) -> None:
        super().pre_request(cycle, request, result)
        if not result.endpoints:
            return
        computes = prefill_target(result) or result.endpoints[0]  # where the prompt's KV is computed
        info = self.info(cycle, request, [computes])
        # byte hashes (tokenizer still loading) are no probe, but the model still seeds the engine's root blocks
        hashes = info.hashes if info.kind is not None else ()
        self.precise.routed(computes.name, request.request_id, hashes, request.target_model, info.kind or COMPLETION)

    def response_started(self, request: LLMRequest, endpoint: EndpointState) -> None:
        self.learn_tail(request.request_id)
        self.precise.responded(request.request_id)

    def response_complete(self, request: LLMRequest, endpoint: EndpointState, usage: Mapping[str, int]) -> None:
        super().response_complete(request, endpoint, usage)
        self.precise.finished(request.request_id)

    def response_failed(self, request: LLMRequest, endpoint: EndpointState, reason: str) -> None:
        """Nothing was computed: the approximate fallback forgets the blocks, and the key-agreement
        probe is inconclusive (the engine will report no blocks for it)."""
        super().response_failed(request, endpoint, reason)
        self.precise.finished(request.request_id)


def served_model(state: EndpointState, request: LLMRequest) -> str | None:
    """The model an endpoint's engine serves, from the ``model_name`` its metrics carry: the only one,
    or the request's target among several; None before the first scrape."""
    models = state.metrics.models if state.metrics is not None else frozenset()
    if len(models) == 1:
        return next(iter(models))
    return request.target_model if request.target_model in models else None


def _tokenizers(p: PrecisePrefixParams, pool: TokenizersPoolConfig | None, handle: PluginHandle) -> TokenizerSource:
    """The explicit ``tokenizer``, else llm-d's pool config, else a token-producer plugin's, else ``auto``."""
    if p.tokenizer is None and pool is not None:
        return pool_tokenizers(pool)
    if p.tokenizer is None:
        for plugin_type in (TOKEN_PRODUCER, LEGACY_TOKEN_PRODUCER):
            producer = handle.by_type(plugin_type)
            if isinstance(producer, TokenProducer):
                return producer.tokenizers
    try:
        return load_tokenizers(p.tokenizer or AUTO_TOKENIZER)
    except ValueError as err:
        raise ParamError("tokenizer", str(err)) from None


def factory(name: str, params: Mapping[str, Any], handle: PluginHandle) -> PrecisePrefixCacheProducer:
    flat, llmd = split_llmd(params)
    p = decode_params(PrecisePrefixParams, flat)
    pool = llmd.indexer_config.tokenizers_pool_config if llmd and llmd.indexer_config else None
    tokenizers = _tokenizers(p, pool, handle)
    precise = PreciseIndex(
        handle.clock, BlockIndex(p.lru_capacity_per_server), event_timeout=p.event_timeout,
        resync_window=p.resync_window, max_blocks_per_endpoint=p.max_blocks_per_endpoint,
        young_window=p.young_view_window,
    )  # fmt: skip
    handle.needs.kv_event_feeds.append(KVEventFeed(
        precise, SubscriberMode(p.mode), port=p.kv_events_port, bind_endpoint=p.bind_endpoint,
        topic_filter=p.topic_filter, rank_offset=p.kv_events_rank_offset, replay_port=p.kv_events_replay_port,
    ))  # fmt: skip
    if isinstance(tokenizers, BackgroundLoading):
        handle.needs.tokenizer_sources.append(tokenizers)  # serving: never load a tokenizer on the pick path
    shared = None
    if p.redis_url is not None:
        shared = ReplicatedPrefixIndex(precise, f"{handle.child_rng().getrandbits(64):016x}")
        handle.needs.shared_indexes.append(SharedIndexFeed(shared, p.redis_url, p.redis_stream, p.redis_max_len))
    producer = PrecisePrefixCacheProducer(name, p, precise, tokenizers, shared)
    handle.needs.offloading.append(producer)  # serving: the rest of a new prompt is encoded off the event loop
    return producer
