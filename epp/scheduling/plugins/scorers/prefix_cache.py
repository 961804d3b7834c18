"""``prefix-cache-scorer``: prefer endpoints that likely hold the prompt's prefix in their KV cache.

Score = m / n, with n the prompt's hashed blocks and m the leading blocks the endpoint holds
according to the prefix producer (GIE; no blocks → 0). With ``matchLengthWeight`` w > 0 the score
also rewards absolute match length: (1 − w) · m/n + w · min(1, m · blockTokens / 8192). Not
metric-based: staleness does not apply.

The match comes from a producer plugin: the one named by ``prefixMatchInfoProducerName`` (llm-d),
else the configured ``approx-prefix-cache-producer``, else one this scorer creates from its own
indexer parameters (GIE's ``blockSizeTokens``, ``maxPrefixBlocksToMatch``, ``lruCapacityPerServer``,
``autoTune``). Indexer parameters on the scorer when a producer is configured are an error rather
than silently ignored.

``precise-prefix-cache-scorer`` is llm-d's deprecated all-in-one form (``tokenProcessorConfig``,
``indexerConfig``, ``kvEventsConfig``): it builds a ``precise-prefix-cache-producer`` from those
parameters (``llmd`` maps them) and scores from it exactly as this scorer does.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from epp.datastore import EndpointState
from epp.request import LLMRequest
from epp.plugin.typed_name import TypedName
from epp.scheduling.framework import CycleState
from epp.plugin.params import ParamError, decode_params
from epp.scheduling.prefix import precise_producer
from epp.scheduling.prefix.producer import (
    APPROX_PREFIX_CACHE_PRODUCER,
    ApproxPrefixCacheProducer,
    PrefixIndexParams,
)
from epp.plugin.registry import PluginHandle

PREFIX_CACHE_SCORER = "prefix-cache-scorer"
PRECISE_PREFIX_CACHE_SCORER = "precise-prefix-cache-scorer"
MATCH_LENGTH_SCALE_TOKENS = 8192


@dataclass(frozen=True, slots=True)
class PrefixScorerParams:
    prefix_match_info_producer_name: str | None = None
    match_length_weight: float = 0.0

    def __post_init__(self) -> None:
        if not 0.0 <= self.match_length_weight <= 1.0:
            raise ParamError("matchLengthWeight", "must be between 0 and 1")


class PrefixCacheScorer:
    def __init__(
        self, producer: ApproxPrefixCacheProducer, name: str = PREFIX_CACHE_SCORER, match_length_weight: float = 0.0,
        plugin_type: str = PREFIX_CACHE_SCORER,
    ) -> None:
        self.typed_name = TypedName(plugin_type, name)
        self.producer = producer
        self.match_length_weight = match_length_weight

    def score(self, cycle: CycleState, request: LLMRequest, endpoints: list[EndpointState]) -> list[float]:
        info, hits = self.producer.match(cycle, request, endpoints)
        total = info.total
        if total == 0:
            return [0.0] * len(endpoints)
        w = self.match_length_weight
        if w == 0.0:
            return [h / total for h in hits]
        scale = MATCH_LENGTH_SCALE_TOKENS / info.block_tokens
        return [(1 - w) * h / total + w * min(1.0, h / scale) for h in hits]


def resolve_producer(name: str, index_params: Mapping[str, Any], own: PrefixScorerParams, handle: PluginHandle) -> ApproxPrefixCacheProducer:
    """The prefix producer a consumer named ``name`` reads (see the module docstring), created when none is configured."""
    decoded = decode_params(PrefixIndexParams, index_params)
    wanted = own.prefix_match_info_producer_name
    if wanted is not None:
        found = handle.plugins.get(wanted)
        if not isinstance(found, ApproxPrefixCacheProducer):
            raise ParamError("prefixMatchInfoProducerName", f"no prefix producer plugin named {wanted!r}")
    else:
        configured = handle.by_type(APPROX_PREFIX_CACHE_PRODUCER)
        found = configured if isinstance(configured, ApproxPrefixCacheProducer) else None
    if found is not None:
        if index_params:
            key = next(iter(index_params))
            raise ParamError(key, f"belongs on the {found.typed_name.name!r} producer plugin")
        return found
    producer_name = APPROX_PREFIX_CACHE_PRODUCER if handle.available(APPROX_PREFIX_CACHE_PRODUCER) else f"{name}-producer"
    producer = ApproxPrefixCacheProducer(producer_name, decoded)
    handle.add(producer)
    return producer


def factory(name: str, params: Mapping[str, Any], handle: PluginHandle) -> PrefixCacheScorer:
    own_keys = {"prefixMatchInfoProducerName", "matchLengthWeight"}
    own = decode_params(PrefixScorerParams, {k: v for k, v in params.items() if k in own_keys})
    index_params = {k: v for k, v in params.items() if k not in own_keys}
    return PrefixCacheScorer(resolve_producer(name, index_params, own, handle), name, own.match_length_weight)


def precise_factory(name: str, params: Mapping[str, Any], handle: PluginHandle) -> PrefixCacheScorer:
    """llm-d's ``precise-prefix-cache-scorer``: its own precise producer, named ``<name>-producer``."""
    producer = precise_producer.factory(f"{name}-producer", params, handle)
    handle.add(producer)
    return PrefixCacheScorer(producer, name, plugin_type=PRECISE_PREFIX_CACHE_SCORER)
