"""``label-selector-filter`` (llm-d ``filter/bylabel``): keep endpoints whose labels match a Kubernetes
label selector.

Parameters are a ``metav1.LabelSelector``: ``matchLabels`` (key: value, all must match) and
``matchExpressions`` (``{key, operator, values}`` with operator In, NotIn, Exists, DoesNotExist; In and
NotIn need values, Exists and DoesNotExist must have none). All requirements must hold; an empty
selector matches everything, as ``LabelSelectorAsSelector`` makes it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from epp.datastore import EndpointState
from epp.request import LLMRequest
from epp.plugin.typed_name import TypedName
from epp.scheduling.framework import CycleState
from epp.plugin.params import ParamError, decode_params
from epp.plugin.registry import PluginHandle

LABEL_SELECTOR_FILTER = "label-selector-filter"

Requirement = Callable[[Mapping[str, str]], bool]


def label_equals(key: str, value: str, want: bool = True) -> Requirement:
    """``key=value`` (``want``) or ``key!=value``: a missing label is not equal."""
    return lambda labels: (labels.get(key) == value) == want


def label_in(key: str, allowed: frozenset[str], want: bool = True) -> Requirement:
    """``key in (...)`` (``want``) or ``key notin (...)``: a missing label is in no set."""
    return lambda labels: (labels.get(key) in allowed) == want


def label_exists(key: str, want: bool = True) -> Requirement:
    """``key`` (``want``) or ``!key``."""
    return lambda labels: (key in labels) == want


@dataclass(frozen=True, slots=True)
class SelectorParams:
    match_labels: dict[str, Any] = field(default_factory=dict)
    match_expressions: list[dict[str, Any]] = field(default_factory=list)


def requirements(params: SelectorParams) -> list[Requirement]:
    """The selector as predicates over a label map; ParamError names a malformed requirement."""
    reqs: list[Requirement] = []
    for label, value in params.match_labels.items():
        if not isinstance(value, str):
            raise ParamError(f"matchLabels.{label}", "must be a string")
        reqs.append(label_equals(label, value))
    for i, expr in enumerate(params.match_expressions):
        where = f"matchExpressions[{i}]"
        unknown = set(expr) - {"key", "operator", "values"}
        if unknown:
            raise ParamError(f"{where}.{sorted(unknown)[0]}", "unknown field (known: key, operator, values)")
        key, op, values = expr.get("key"), expr.get("operator"), expr.get("values") or []
        if not isinstance(key, str) or not key:
            raise ParamError(f"{where}.key", "is required")
        if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
            raise ParamError(f"{where}.values", "must be a list of strings")
        allowed = frozenset(values)
        if op in ("In", "NotIn"):
            if not allowed:
                raise ParamError(f"{where}.values", f"must not be empty for {op}")
            reqs.append(label_in(key, allowed, want=op == "In"))
        elif op in ("Exists", "DoesNotExist"):
            if allowed:
                raise ParamError(f"{where}.values", f"must be empty for {op}")
            reqs.append(label_exists(key, want=op == "Exists"))
        else:
            raise ParamError(f"{where}.operator", "must be one of In, NotIn, Exists, DoesNotExist")
    return reqs


class LabelSelectorFilter:
    def __init__(self, name: str, params: SelectorParams) -> None:
        self.typed_name = TypedName(LABEL_SELECTOR_FILTER, name)
        self.requirements = requirements(params)

    def filter(self, cycle: CycleState, request: LLMRequest, endpoints: list[EndpointState]) -> list[EndpointState]:
        reqs = self.requirements
        return [e for e in endpoints if all(r(e.endpoint.labels) for r in reqs)]


def factory(name: str, params: Mapping[str, Any], handle: PluginHandle) -> LabelSelectorFilter:
    return LabelSelectorFilter(name, decode_params(SelectorParams, params))
