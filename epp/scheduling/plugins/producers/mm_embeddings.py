"""``mm-embeddings-cache-producer`` (llm-d ``dataproducer/multimodal``): which endpoints recently encoded a
request's images, audio or video, so their encoder cache can be reused.

Items are the request's typed OpenAI chat media blocks (``image_url``, ``input_audio``, ``video_url``,
``input_image``), each identified by a hash of its content (the URL or inline data), repeated items
counted once — llm-d's tokenizer-free fallback; epp has no multimodal tokenizer features. Per endpoint
an LRU remembers ``cacheSizeInMBPerServer`` MiB / 2 MiB items (default 4096 → 2048; ``cacheSizeInMB`` is
the older name; ≤ 0 → default). Once the pick is final the items are recorded on the endpoint of the
``encodeProfile`` profile (default ``encode``) when a disaggregated pick has one, else on the primary.
Removed endpoints are forgotten.

``mm-embeddings-cache-scorer`` scores matched items / request items per endpoint (0 without items).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson
import xxhash

from epp.datastore import Endpoint, EndpointState
from epp.request import LLMRequest
from epp.scheduling.bookings import Bookings
from epp.plugin.typed_name import TypedName
from epp.scheduling.framework import CycleState, SchedulingResult
from epp.plugin.params import ParamError, decode_params
from epp.plugin.registry import PluginHandle

MM_EMBEDDINGS_CACHE_PRODUCER = "mm-embeddings-cache-producer"
MM_EMBEDDINGS_CACHE_SCORER = "mm-embeddings-cache-scorer"
DEFAULT_CACHE_MB = 4096
MB_PER_ITEM = 2
MEDIA_BLOCKS = {"image_url": "image", "input_image": "image", "input_audio": "audio", "audio_url": "audio", "video_url": "video"}


@dataclass(frozen=True, slots=True)
class MMParams:
    cache_size_in_mb_per_server: int | None = field(default=None, metadata={"key": "cacheSizeInMBPerServer"})
    cache_size_in_mb: int | None = field(default=None, metadata={"key": "cacheSizeInMB"})
    encode_profile: str = "encode"

    def __post_init__(self) -> None:
        if self.cache_size_in_mb_per_server is not None and self.cache_size_in_mb is not None:
            raise ParamError("cacheSizeInMB", "set only one of cacheSizeInMBPerServer and cacheSizeInMB")

    @property
    def capacity(self) -> int:
        mb = self.cache_size_in_mb_per_server if self.cache_size_in_mb_per_server is not None else self.cache_size_in_mb
        return max(1, (mb if mb is not None and mb > 0 else DEFAULT_CACHE_MB) // MB_PER_ITEM)


def media_items(request: LLMRequest) -> frozenset[int]:
    """Hashes of the request's media blocks, each once."""
    messages = request.body.get("messages") if request.body else None
    if not isinstance(messages, list):
        return frozenset()
    items = set()
    for message in messages:
        content = message.get("content") if isinstance(message, dict) else None
        if not isinstance(content, list):
            continue
        for block in content:
            if isinstance(block, dict) and (kind := block.get("type")) in MEDIA_BLOCKS:
                items.add(xxhash.xxh3_64_intdigest(orjson.dumps(block.get(kind), option=orjson.OPT_SORT_KEYS)))
    return frozenset(items)


class MMEmbeddingsCacheProducer:
    def __init__(self, name: str = MM_EMBEDDINGS_CACHE_PRODUCER, params: MMParams | None = None) -> None:
        self.typed_name = TypedName(MM_EMBEDDINGS_CACHE_PRODUCER, name)
        self.params = params or MMParams()
        self.capacity = self.params.capacity
        self._caches: dict[str, OrderedDict[int, None]] = {}
        self._key = f"mm-items/{name}"
        self._added: Bookings[tuple[str, list[int]]] = Bookings()
        """Per request in flight: the endpoint and the items it was the first to send there."""

    def items(self, cycle: CycleState, request: LLMRequest) -> frozenset[int]:
        found = cycle.get(self._key)
        if found is None:
            found = cycle[self._key] = media_items(request)
        return found

    def matched(self, cycle: CycleState, request: LLMRequest, endpoints: list[EndpointState]) -> tuple[int, list[int]]:
        """(request items, matched items per endpoint)."""
        items = self.items(cycle, request)
        if not items:
            return 0, [0] * len(endpoints)
        caches = self._caches
        return len(items), [sum(1 for i in items if i in caches.get(e.name, ())) for e in endpoints]

    def pre_request(self, cycle: CycleState, request: LLMRequest, result: SchedulingResult) -> None:
        items = self.items(cycle, request)
        encode = result.profile_results.get(self.params.encode_profile)
        target = encode.endpoints if encode is not None and encode.endpoints else result.endpoints
        if not items or not target:
            return
        cache = self._caches.setdefault(target[0].name, OrderedDict())
        fresh = [item for item in items if item not in cache]
        if fresh:
            self._added.put(request.request_id, (target[0].name, fresh))
        for item in items:
            cache[item] = None
            cache.move_to_end(item)
        while len(cache) > self.capacity:
            cache.popitem(last=False)

    def response_complete(self, request: LLMRequest, endpoint: EndpointState, usage: Mapping[str, int]) -> None:
        self._added.pop(request.request_id)

    def response_failed(self, request: LLMRequest, endpoint: EndpointState, reason: str) -> None:
        """A failed request encoded nothing: the items it was the first to send are not cached there."""
        booked = self._added.pop(request.request_id)
        if booked is None:
            return
        name, fresh = booked
        cache = self._caches.get(name)
        if cache is not None:
            for item in fresh:
                cache.pop(item, None)

    def endpoint_added(self, endpoint: Endpoint) -> None:
        return None

    def endpoint_removed(self, endpoint: Endpoint) -> None:
        self._caches.pop(endpoint.name, None)


class MMEmbeddingsCacheScorer:
    def __init__(self, producer: MMEmbeddingsCacheProducer, name: str = MM_EMBEDDINGS_CACHE_SCORER) -> None:
        self.typed_name = TypedName(MM_EMBEDDINGS_CACHE_SCORER, name)
        self.producer = producer

    def score(self, cycle: CycleState, request: LLMRequest, endpoints: list[EndpointState]) -> list[float]:
        total, hits = self.producer.matched(cycle, request, endpoints)
        return [h / total if total else 0.0 for h in hits]


def producer_factory(name: str, params: Mapping[str, Any], handle: PluginHandle) -> MMEmbeddingsCacheProducer:
    return MMEmbeddingsCacheProducer(name, decode_params(MMParams, params))


@dataclass(frozen=True, slots=True)
class MMScorerParams:
    producer_name: str | None = None


def scorer_factory(name: str, params: Mapping[str, Any], handle: PluginHandle) -> MMEmbeddingsCacheScorer:
    p = decode_params(MMScorerParams, params)
    found = handle.plugins.get(p.producer_name) if p.producer_name else handle.by_type(MM_EMBEDDINGS_CACHE_PRODUCER)
    if not isinstance(found, MMEmbeddingsCacheProducer):
        if p.producer_name:
            raise ParamError("producerName", f"no {MM_EMBEDDINGS_CACHE_PRODUCER} plugin named {p.producer_name!r}")
        found = MMEmbeddingsCacheProducer(f"{name}-producer")
        handle.add(found)
    return MMEmbeddingsCacheScorer(found, name)
