"""``endpoint-attribute-scorer`` (llm-d ``scorer/endpointattribute``): score by one numeric attribute.

``algorithm.type`` is ``linear_lower_is_better`` or ``linear_higher_is_better``. With
``normalization.fixedRange {min, max}`` the value is clamped into the range and scaled to [0, 1];
otherwise (``adaptiveRange``, the default) it is scaled between the smallest and largest value among
the candidates that have it, and all-equal values score 1. Lower-is-better flips the scale. Endpoints
without the attribute score 0. ``producer`` names the extractor that writes it (checked, as for the
filter).
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
from epp.scheduling.plugins.attributes import attribute
from epp.scheduling.plugins.filters.endpoint_attribute import check_producer
from epp.plugin.registry import PluginHandle

ENDPOINT_ATTRIBUTE_SCORER = "endpoint-attribute-scorer"
LOWER_IS_BETTER = "linear_lower_is_better"
HIGHER_IS_BETTER = "linear_higher_is_better"


@dataclass(frozen=True, slots=True)
class AttributeScorerParams:
    attribute_key: str = ""
    producer: str | None = None
    algorithm: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        if not self.attribute_key:
            raise ParamError("attributeKey", "is required")


def _scale(algorithm: dict[str, Any] | None) -> tuple[bool, tuple[float, float] | None]:
    """(lower is better, fixed range or None for adaptive) from the algorithm block."""
    if not isinstance(algorithm, dict) or algorithm.get("type") not in (LOWER_IS_BETTER, HIGHER_IS_BETTER):
        raise ParamError("algorithm.type", f"must be {LOWER_IS_BETTER!r} or {HIGHER_IS_BETTER!r}")
    unknown = set(algorithm) - {"type", "normalization"}
    if unknown:
        raise ParamError(f"algorithm.{sorted(unknown)[0]}", "unknown field (known: normalization, type)")
    norm = algorithm.get("normalization") or {}
    if not isinstance(norm, dict) or set(norm) - {"fixedRange", "adaptiveRange"}:
        raise ParamError("algorithm.normalization", "may hold fixedRange or adaptiveRange")
    if "fixedRange" in norm and "adaptiveRange" in norm:
        raise ParamError("algorithm.normalization", "allows at most one of fixedRange and adaptiveRange")
    fixed = norm.get("fixedRange")
    if fixed is None:
        return algorithm["type"] == LOWER_IS_BETTER, None
    lo, hi = (fixed.get(k, 0.0) if isinstance(fixed, dict) else None for k in ("min", "max"))
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (lo, hi)) or lo >= hi:  # type: ignore[operator]
        raise ParamError("algorithm.normalization.fixedRange", "needs numbers min < max")
    return algorithm["type"] == LOWER_IS_BETTER, (float(lo), float(hi))  # type: ignore[arg-type]


class EndpointAttributeScorer:
    def __init__(self, name: str, params: AttributeScorerParams) -> None:
        self.typed_name = TypedName(ENDPOINT_ATTRIBUTE_SCORER, name)
        self.key = params.attribute_key
        self.lower_is_better, self.fixed = _scale(params.algorithm)

    def score(self, cycle: CycleState, request: LLMRequest, endpoints: list[EndpointState]) -> list[float]:
        values = [attribute(e, self.key) for e in endpoints]
        if self.fixed is not None:
            lo, span = self.fixed[0], self.fixed[1] - self.fixed[0]
            scaled = [None if v is None else min(1.0, max(0.0, (v - lo) / span)) for v in values]
        else:
            known = [v for v in values if v is not None]
            lo, hi = (min(known), max(known)) if known else (0.0, 0.0)
            if lo == hi:
                return [0.0 if v is None else 1.0 for v in values]
            scaled = [None if v is None else (v - lo) / (hi - lo) for v in values]
        flip = self.lower_is_better
        return [0.0 if s is None else (1.0 - s if flip else s) for s in scaled]


def factory(name: str, params: Mapping[str, Any], handle: PluginHandle) -> EndpointAttributeScorer:
    p = decode_params(AttributeScorerParams, params)
    check_producer(handle, p.producer)
    return EndpointAttributeScorer(name, p)
