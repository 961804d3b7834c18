"""``context-length-aware`` (llm-d ``scorer/contextlengthaware``): route by the prompt's length to pods
labelled with the context range they serve.

The label (``llm-d.ai/context-length-range`` by default) holds ``min-max`` in tokens. The prompt's
length is its token count when the request carries token ids, else characters × 0.25 as upstream.

* Scorer: unlabelled → 0.5; bad label → 0; in range → 0.3 + 0.7 · (0.7 · 1/(1 + width/10000) +
  0.3 · (max − length)/width) (1 when width is 0), so tighter ranges and more headroom win; out of range
  → 0.3 / (1 + distance/1000), always below any in-range score.
* Filter (``enableFiltering: true``): keeps unlabelled endpoints and those whose range holds the length;
  a bad label drops the endpoint. Off by default: then it passes everything.
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
from epp.plugin.registry import PluginHandle

CONTEXT_LENGTH_AWARE = "context-length-aware"
DEFAULT_LABEL = "llm-d.ai/context-length-range"
CHARS_TO_TOKENS = 0.25
MAX_FALLBACK_SCORE = 0.3


@dataclass(frozen=True, slots=True)
class ContextLengthParams:
    label: str = DEFAULT_LABEL
    enable_filtering: bool = False

    def __post_init__(self) -> None:
        if not self.label:
            raise ParamError("label", "must be specified")


def parse_range(text: str) -> tuple[int, int] | None:
    """``"min-max"`` → (min, max); None when malformed or min > max."""
    parts = text.split("-")
    if len(parts) != 2:
        return None
    try:
        lo, hi = int(parts[0].strip()), int(parts[1].strip())
    except ValueError:
        return None
    return (lo, hi) if lo <= hi else None


def range_score(length: int, lo: int, hi: int) -> float:
    if lo <= length <= hi:
        width = hi - lo
        if width == 0:
            return 1.0
        raw = 0.7 * (1.0 / (1.0 + width / 10000.0)) + 0.3 * ((hi - length) / width)
        return MAX_FALLBACK_SCORE + raw * (1.0 - MAX_FALLBACK_SCORE)
    distance = length - hi if length > hi else lo - length
    return MAX_FALLBACK_SCORE / (1.0 + distance / 1000.0)


def context_length(request: LLMRequest) -> int:
    if request.prompt_token_ids is not None:
        return len(request.prompt_token_ids)
    return int(len(request.prompt_bytes) * CHARS_TO_TOKENS)


class ContextLengthAware:
    def __init__(self, name: str = CONTEXT_LENGTH_AWARE, params: ContextLengthParams | None = None) -> None:
        self.typed_name = TypedName(CONTEXT_LENGTH_AWARE, name)
        self.params = params or ContextLengthParams()

    def filter(self, cycle: CycleState, request: LLMRequest, endpoints: list[EndpointState]) -> list[EndpointState]:
        if not self.params.enable_filtering:
            return endpoints
        length, label = context_length(request), self.params.label
        kept = []
        for e in endpoints:
            text = e.endpoint.labels.get(label)
            if text is None:
                kept.append(e)
            elif (r := parse_range(text)) is not None and r[0] <= length <= r[1]:
                kept.append(e)
        return kept

    def score(self, cycle: CycleState, request: LLMRequest, endpoints: list[EndpointState]) -> list[float]:
        length, label = context_length(request), self.params.label
        out = []
        for e in endpoints:
            text = e.endpoint.labels.get(label)
            if text is None:
                out.append(0.5)
            elif (r := parse_range(text)) is None:
                out.append(0.0)
            else:
                out.append(range_score(length, *r))
        return out


def factory(name: str, params: Mapping[str, Any], handle: PluginHandle) -> ContextLengthAware:
    return ContextLengthAware(name, decode_params(ContextLengthParams, params))
