"""``endpoint-attribute-filter`` (llm-d ``filter/endpointattribute``): keep endpoints whose numeric
attribute satisfies a threshold.

``algorithm: {type: threshold, threshold: {operator, value}}`` with operator one of LessThan,
LessThanOrEqual, GreaterThan, GreaterThanOrEqual, Equal, NotEqual. An endpoint without the attribute
passes when ``onMissing`` is ``Pass`` (default) and is dropped on ``Fail``. With ``fallbackOnEmpty``
an empty result gives back every candidate. ``producer`` names the extractor plugin that writes the
attribute (it must be in the config); attributes are looked up as ``epp.scheduling.plugins.attributes``
says.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from epp.datastore import EndpointState
from epp.request import LLMRequest
from epp.plugin.typed_name import TypedName
from epp.scheduling.framework import CycleState
from epp.plugin.params import ParamError, decode_params
from epp.scheduling.plugins.attributes import attribute
from epp.plugin.registry import PluginHandle

ENDPOINT_ATTRIBUTE_FILTER = "endpoint-attribute-filter"

OPERATORS: Mapping[str, Callable[[float, float], bool]] = {
    "LessThan": operator.lt, "LessThanOrEqual": operator.le, "GreaterThan": operator.gt,
    "GreaterThanOrEqual": operator.ge, "Equal": operator.eq, "NotEqual": operator.ne,
}


@dataclass(frozen=True, slots=True)
class AttributeFilterParams:
    attribute: str = ""
    on_missing: str = "Pass"
    fallback_on_empty: bool = False
    producer: str | None = None
    algorithm: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        if not self.attribute:
            raise ParamError("attribute", "is required")
        if self.on_missing not in ("Pass", "Fail"):
            raise ParamError("onMissing", "must be 'Pass' or 'Fail'")


def threshold_of(algorithm: dict[str, Any] | None) -> tuple[Callable[[float, float], bool], float]:
    """The (comparison, value) of a ``threshold`` algorithm, or ParamError naming the bad field."""
    if not isinstance(algorithm, dict) or algorithm.get("type") != "threshold":
        raise ParamError("algorithm.type", "must be 'threshold'")
    unknown = set(algorithm) - {"type", "threshold"}
    if unknown:
        raise ParamError(f"algorithm.{sorted(unknown)[0]}", "unknown field (known: threshold, type)")
    threshold = algorithm.get("threshold")
    if not isinstance(threshold, dict):
        raise ParamError("algorithm.threshold", "is required when algorithm.type is 'threshold'")
    unknown = set(threshold) - {"operator", "value"}
    if unknown:
        raise ParamError(f"algorithm.threshold.{sorted(unknown)[0]}", "unknown field (known: operator, value)")
    op = OPERATORS.get(threshold.get("operator"))  # type: ignore[arg-type]
    if op is None:
        raise ParamError("algorithm.threshold.operator", f"must be one of {', '.join(OPERATORS)}")
    value = threshold.get("value", 0)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ParamError("algorithm.threshold.value", "must be a number")
    return op, float(value)


def check_producer(handle: PluginHandle, name: str | None) -> None:
    """A named producer must be a plugin of the same config."""
    if name is not None and name not in handle.reserved and name not in handle.plugins:
        raise ParamError("producer", f"no plugin named {name!r} in this config")


class EndpointAttributeFilter:
    def __init__(self, name: str, params: AttributeFilterParams) -> None:
        self.typed_name = TypedName(ENDPOINT_ATTRIBUTE_FILTER, name)
        self.params = params
        self.compare, self.value = threshold_of(params.algorithm)

    def filter(self, cycle: CycleState, request: LLMRequest, endpoints: list[EndpointState]) -> list[EndpointState]:
        key, compare, limit = self.params.attribute, self.compare, self.value
        keep_missing = self.params.on_missing == "Pass"
        kept = []
        for e in endpoints:
            v = attribute(e, key)
            if (keep_missing if v is None else compare(v, limit)):
                kept.append(e)
        if not kept and self.params.fallback_on_empty:
            return endpoints
        return kept


def factory(name: str, params: Mapping[str, Any], handle: PluginHandle) -> EndpointAttributeFilter:
    p = decode_params(AttributeFilterParams, params)
    check_producer(handle, p.producer)
    return EndpointAttributeFilter(name, p)
