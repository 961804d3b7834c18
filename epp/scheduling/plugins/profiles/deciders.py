"""llm-d's disaggregation deciders (``profilehandler/disagg``): given the decode endpoint already picked,
should this request also run the prefill (or encode) stage on another endpoint?

* ``always-disagg-pd-decider``: always.
* ``prefix-based-pd-decider``: only when the prompt part the decode endpoint does not already cache is at
  least ``nonCachedTokens`` tokens (upstream ``prefix_based_pd_decider.go``): prompt tokens are estimated
  as characters ÷ 4 (exact when the request carries token ids), cached tokens are the decode endpoint's
  matched prefix blocks × tokens per block from the prefix producer. ``nonCachedTokens: 0`` (the default)
  disables it. The producer is the configured ``approx-``/``precise-prefix-cache-producer``, else one the
  decider creates, as the prefix scorer does — upstream needs the producer configured and never
  disaggregates without it; here the decision always has the data it reads. ``promptTokens``, which
  llm-d's disaggregation guide sets, is not an upstream field (upstream ignores it): accepted, ignored.
* ``always-disagg-multimodal-decider``: when the request carries media blocks (image, audio, video).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from epp.datastore import EndpointState
from epp.request import LLMRequest
from epp.plugin.typed_name import TypedName
from epp.scheduling.framework import CycleState
from epp.plugin.params import NoParams, ParamError, decode_params
from epp.scheduling.plugins.producers.mm_embeddings import media_items
from epp.scheduling.plugins.scorers.prefix_cache import PrefixScorerParams, resolve_producer
from epp.scheduling.prefix.producer import ApproxPrefixCacheProducer
from epp.plugin.registry import PluginHandle

ALWAYS_DISAGG_PD_DECIDER = "always-disagg-pd-decider"
PREFIX_BASED_PD_DECIDER = "prefix-based-pd-decider"
ALWAYS_DISAGG_MULTIMODAL_DECIDER = "always-disagg-multimodal-decider"
CHARS_PER_TOKEN = 4


@runtime_checkable
class Decider(Protocol):
    @property
    def typed_name(self) -> TypedName: ...

    def disaggregate(self, cycle: CycleState, request: LLMRequest, decode: EndpointState) -> bool:
        """Whether ``request``, bound for ``decode``, should also run the stage this decider gates."""
        ...


class AlwaysDisaggPDDecider:
    def __init__(self, name: str = ALWAYS_DISAGG_PD_DECIDER) -> None:
        self.typed_name = TypedName(ALWAYS_DISAGG_PD_DECIDER, name)

    def disaggregate(self, cycle: CycleState, request: LLMRequest, decode: EndpointState) -> bool:
        return True


class AlwaysDisaggMultimodalDecider:
    def __init__(self, name: str = ALWAYS_DISAGG_MULTIMODAL_DECIDER) -> None:
        self.typed_name = TypedName(ALWAYS_DISAGG_MULTIMODAL_DECIDER, name)

    def disaggregate(self, cycle: CycleState, request: LLMRequest, decode: EndpointState) -> bool:
        return bool(media_items(request))


@dataclass(frozen=True, slots=True)
class PrefixDeciderParams:
    non_cached_tokens: int = 0
    prompt_tokens: int | None = None
    prefix_match_info_producer_name: str | None = None

    def __post_init__(self) -> None:
        if self.non_cached_tokens < 0:
            raise ParamError("nonCachedTokens", "must not be negative")


def prompt_tokens(request: LLMRequest) -> int:
    """Upstream's estimate: prompt characters ÷ 4 (the JSON of the chat messages for chat requests)."""
    if request.prompt_token_ids is not None:
        return len(request.prompt_token_ids)
    return len(request.prompt_bytes) // CHARS_PER_TOKEN


class PrefixBasedPDDecider:
    def __init__(self, producer: ApproxPrefixCacheProducer, non_cached_tokens: int,
                 name: str = PREFIX_BASED_PD_DECIDER) -> None:
        self.typed_name = TypedName(PREFIX_BASED_PD_DECIDER, name)
        self.producer = producer
        self.non_cached_tokens = non_cached_tokens

    def uncached_tokens(self, cycle: CycleState, request: LLMRequest, decode: EndpointState) -> int:
        """Prompt tokens ``decode`` does not hold according to the prefix producer."""
        info, hits = self.producer.match(cycle, request, [decode])
        return prompt_tokens(request) - hits[0] * info.block_tokens

    def disaggregate(self, cycle: CycleState, request: LLMRequest, decode: EndpointState) -> bool:
        threshold = self.non_cached_tokens
        if threshold == 0 or prompt_tokens(request) < threshold:
            return False
        return self.uncached_tokens(cycle, request, decode) >= threshold


def always_pd_factory(name: str, params: Mapping[str, Any], handle: PluginHandle) -> AlwaysDisaggPDDecider:
    decode_params(NoParams, params)
    return AlwaysDisaggPDDecider(name)


def multimodal_factory(name: str, params: Mapping[str, Any], handle: PluginHandle) -> AlwaysDisaggMultimodalDecider:
    decode_params(NoParams, params)
    return AlwaysDisaggMultimodalDecider(name)


def prefix_based_factory(name: str, params: Mapping[str, Any], handle: PluginHandle) -> PrefixBasedPDDecider:
    p = decode_params(PrefixDeciderParams, params)
    configured = [q for q in handle.plugins.values() if isinstance(q, ApproxPrefixCacheProducer)]
    if p.prefix_match_info_producer_name is None and configured:
        producer = configured[0]  # approx or precise, whichever the config declares
    else:
        producer = resolve_producer(name, {}, PrefixScorerParams(p.prefix_match_info_producer_name), handle)
    return PrefixBasedPDDecider(producer, p.non_cached_tokens, name)
