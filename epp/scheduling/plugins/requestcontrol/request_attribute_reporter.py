"""``request-attribute-reporter`` (GIE/llm-d ``requestcontrol/requestattributereporter``): when a response
ends, compute values from its usage with CEL and hand them to the gateway as dynamic metadata (e.g. the
request's token cost for Envoy's rate limiting).

``attributes`` is a list of ``{key: {namespace (default envoy.lb), name}, expression, condition?}``.
``expression`` must give an integer; ``condition``, when present, must give a boolean and gates it. Both
see ``usage`` (``prompt_tokens``, ``completion_tokens``, ``total_tokens`` as the engine reported them).
Expressions are compiled at start, so a syntax error fails the config. An attribute whose evaluation
fails (a usage field absent without a guarding condition) or gives a non-integer is left out, logged
once per attribute. CEL comes from the ``common-expression-language`` package (compiled, no Go).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import cel

from epp.datastore import EndpointState
from epp.request import LLMRequest
from epp.plugin.typed_name import TypedName
from epp.plugin.params import ParamError, decode_params
from epp.plugin.registry import PluginHandle

log = logging.getLogger(__name__)

REQUEST_ATTRIBUTE_REPORTER = "request-attribute-reporter"
DEFAULT_NAMESPACE = "envoy.lb"


@dataclass(frozen=True, slots=True)
class ReporterParams:
    attributes: list[dict[str, Any]] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class Attribute:
    namespace: str
    name: str
    expression: Any  # cel.Program
    condition: Any | None


def _compile(text: object, where: str) -> Any:
    if not isinstance(text, str) or not text.strip():
        raise ParamError(where, "must be a CEL expression")
    try:
        return cel.compile(text.strip())
    except ValueError as err:
        raise ParamError(where, f"invalid CEL: {str(err).splitlines()[0]}") from None


def _attributes(raw: list[dict[str, Any]]) -> list[Attribute]:
    out = []
    for i, item in enumerate(raw):
        where = f"attributes[{i}]"
        unknown = set(item) - {"key", "expression", "condition"}
        if unknown:
            raise ParamError(f"{where}.{sorted(unknown)[0]}", "unknown field (known: condition, expression, key)")
        key = item.get("key")
        if not isinstance(key, dict) or not isinstance(key.get("name"), str) or not key["name"]:
            raise ParamError(f"{where}.key.name", "is required")
        if set(key) - {"namespace", "name"}:
            raise ParamError(f"{where}.key", "may hold only namespace and name")
        namespace = key.get("namespace") or DEFAULT_NAMESPACE
        condition = item.get("condition")
        out.append(Attribute(namespace, key["name"], _compile(item.get("expression"), f"{where}.expression"),
                             None if condition is None else _compile(condition, f"{where}.condition")))
    return out


class RequestAttributeReporter:
    def __init__(self, name: str, params: ReporterParams) -> None:
        self.typed_name = TypedName(REQUEST_ATTRIBUTE_REPORTER, name)
        self.attributes = _attributes(params.attributes)
        self._warned: set[str] = set()

    def response_metadata(self, request: LLMRequest, endpoint: EndpointState, usage: Mapping[str, int]) -> Mapping[str, Mapping[str, Any]]:
        context = {"usage": dict(usage)}
        out: dict[str, dict[str, Any]] = {}
        for a in self.attributes:
            try:
                if a.condition is not None and a.condition.execute(context) is not True:
                    continue
                value = a.expression.execute(context)
            except Exception as err:  # the CEL runtime raises KeyError, TypeError, ValueError …
                self._warn(a, f"evaluation failed: {err!r}")
                continue
            if isinstance(value, bool) or not isinstance(value, int):
                self._warn(a, f"expression gave {type(value).__name__}, not an integer")
                continue
            out.setdefault(a.namespace, {})[a.name] = value
        return out

    def _warn(self, attribute: Attribute, why: str) -> None:
        if attribute.name not in self._warned:
            self._warned.add(attribute.name)
            log.warning("%s: attribute %s/%s not reported: %s", self.typed_name, attribute.namespace, attribute.name, why)


def factory(name: str, params: Mapping[str, Any], handle: PluginHandle) -> RequestAttributeReporter:
    return RequestAttributeReporter(name, decode_params(ReporterParams, params))
