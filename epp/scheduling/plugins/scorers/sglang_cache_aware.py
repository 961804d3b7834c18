"""``sglang-cache-aware-scorer``: SGLang router's cache-aware choice, as a scorer.

Per target model, an approximate radix tree of the prompt text sent to each endpoint (``RadixTree``).
For a request with prompt text t (UTF-8 decoded prompt bytes):

* match rate = matched characters / characters of t, on the deepest tree node a candidate passed
  through (empty t → 0);
* rate > ``cacheThreshold`` → score 1 for that node's most recent candidate, 0 for the others;
* otherwise → score 1 for the candidate(s) owning the fewest tree characters (most room), 0 others.

Once the pick is final the prompt is inserted for the chosen endpoint (withdrawn again if the request
fails: nothing was cached there). Every ``evictionIntervalSecs``
(clock-driven, checked on insert) each endpoint's tree share is cut back to ``maxTreeSize``
characters, least recently used leaves first. Removed endpoints leave the tree.

Defaults are the current sgl-router's (``router_args.py``): cacheThreshold 0.3, evictionIntervalSecs
120, maxTreeSize 2^26. Paired with ``sglang-imbalance-filter`` (shortest queue when imbalanced) and a
max-score picker this is the ``sglang-cache-aware`` preset. Deviations from the router, both because
epp's candidates may be a filtered subset: only candidates are considered at a node (walking up to
shallower nodes if none of the deepest node's tenants is a candidate), and ties go to the picker.
Not metric-based: staleness does not apply.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from epp._util.clock import Clock
from epp.datastore import Endpoint, EndpointState
from epp.request import LLMRequest
from epp.scheduling.bookings import Bookings
from epp.plugin.typed_name import TypedName
from epp.scheduling.framework import CycleState, SchedulingResult
from epp.plugin.params import Duration, ParamError, decode_params
from epp.scheduling.prefix.radix_tree import RadixTree
from epp.plugin.registry import PluginHandle

SGLANG_CACHE_AWARE_SCORER = "sglang-cache-aware-scorer"


@dataclass(frozen=True, slots=True)
class CacheAwareParams:
    cache_threshold: float = 0.3
    eviction_interval_secs: Duration = Duration(120.0)
    max_tree_size: int = 2**26

    def __post_init__(self) -> None:
        if not 0.0 <= self.cache_threshold <= 1.0:
            raise ParamError("cacheThreshold", "must be between 0 and 1")
        if self.max_tree_size < 1:
            raise ParamError("maxTreeSize", "must be at least 1")


class SGLangCacheAwareScorer:
    def __init__(self, clock: Clock, name: str = SGLANG_CACHE_AWARE_SCORER, params: CacheAwareParams | None = None):
        self.typed_name = TypedName(SGLANG_CACHE_AWARE_SCORER, name)
        self.clock = clock
        self.params = params or CacheAwareParams()
        self.trees: dict[str, RadixTree] = {}
        self._inserted: Bookings[tuple[RadixTree, str, str, int]] = Bookings()
        """Per request in flight: (tree, text, endpoint, characters the endpoint already held)."""
        self._last_eviction = clock.now()
        self._text_key = f"text/{name}"

    def _text(self, cycle: CycleState, request: LLMRequest) -> str:
        text: str | None = cycle.get(self._text_key)
        if text is None:
            text = request.prompt_bytes.decode("utf-8", errors="replace")
            cycle[self._text_key] = text
        return text

    def score(self, cycle: CycleState, request: LLMRequest, endpoints: list[EndpointState]) -> list[float]:
        names = [e.name for e in endpoints]
        tree = self.trees.get(request.target_model)
        if tree is None:
            tree = self.trees[request.target_model] = RadixTree(self.clock)
        text = self._text(cycle, request)
        matched, owner = tree.prefix_match(text, names) if text else (0, None)
        if owner is not None and matched / len(text) > self.params.cache_threshold:
            chosen = {owner}
        else:
            chosen = set(tree.smallest_tenants(names))
        return [1.0 if n in chosen else 0.0 for n in names]

    def pre_request(self, cycle: CycleState, request: LLMRequest, result: SchedulingResult) -> None:
        if not result.endpoints:
            return
        tree = self.trees.setdefault(request.target_model, RadixTree(self.clock))
        text, name = self._text(cycle, request), result.endpoints[0].name
        held, _ = tree.prefix_match(text, (name,))
        tree.insert(text, name)
        self._inserted.put(request.request_id, (tree, text, name, held))
        now = self.clock.now()
        if now - self._last_eviction >= self.params.eviction_interval_secs:
            self._last_eviction = now
            for t in self.trees.values():
                t.evict(self.params.max_tree_size)

    def response_complete(self, request: LLMRequest, endpoint: EndpointState, usage: Mapping[str, int]) -> None:
        self._inserted.pop(request.request_id)

    def response_failed(self, request: LLMRequest, endpoint: EndpointState, reason: str) -> None:
        booked = self._inserted.pop(request.request_id)
        if booked is not None:
            tree, text, name, held = booked
            tree.withdraw(text, name, held)

    def endpoint_added(self, endpoint: Endpoint) -> None:
        """A new endpoint owns nothing yet, which already makes it the emptiest."""

    def endpoint_removed(self, endpoint: Endpoint) -> None:
        for tree in self.trees.values():
            tree.remove_tenant(endpoint.name)


def factory(name: str, params: Mapping[str, Any], handle: PluginHandle) -> SGLangCacheAwareScorer:
    return SGLangCacheAwareScorer(handle.clock, name, decode_params(CacheAwareParams, params))
