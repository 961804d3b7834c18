"""Run a CRD's ``x-kubernetes-validations`` CEL rules offline, the way the API server does.

The evaluator is the ``common-expression-language`` wheel (cel-rust bindings). The API server
evaluates each rule with ``self`` bound to the value at the rule's schema node, on the
defaulted object, and sees object property names escaped (``namespace`` -> ``__namespace__``,
``a-b`` -> ``a__dash__b``). Transition rules (``oldSelf``) only apply to updates and are
skipped. Kubernetes' CEL libraries go beyond standard CEL; the string helpers our CRDs use are
provided here, and a rule that calls anything else is reported as not runnable rather than
guessed at.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import cel

from tests.manifests.schemas import Problem

_RESERVED = frozenset(
    "true false null in as break const continue else for function if import let loop package "
    "namespace return var void while".split()
)
_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")

# Kubernetes CEL extension functions (strings library) used by the CRDs we validate.
_KUBERNETES_FUNCTIONS: dict[str, Callable[..., Any]] = {
    "split": lambda text, sep: text.split(sep),
    "lowerAscii": lambda text: text.lower(),
    "upperAscii": lambda text: text.upper(),
}


def escape_property(name: str) -> str:
    """The name under which CEL sees an object property (Kubernetes escaping rules)."""
    if name in _RESERVED:
        return f"__{name}__"
    if _IDENTIFIER.match(name) and "__" not in name:
        return name
    return name.replace("__", "__underscores__").replace(".", "__dot__").replace("-", "__dash__").replace("/", "__slash__")


def cel_view(value: Any, schema: dict[str, Any]) -> Any:
    """``value`` as CEL sees it: object properties escaped, map keys left alone."""
    if isinstance(value, dict):
        props = schema.get("properties")
        if props is not None:
            return {escape_property(k): cel_view(v, props.get(k, {})) for k, v in value.items()}
        extra = schema.get("additionalProperties")
        sub = extra if isinstance(extra, dict) else {}
        return {k: cel_view(v, sub) for k, v in value.items()}
    if isinstance(value, list):
        sub = schema.get("items") if isinstance(schema.get("items"), dict) else {}
        return [cel_view(v, sub) for v in value]
    return value


@dataclass
class CelStats:
    """Which rules ran, and which could not run and why (for the report)."""

    ran: Counter[str] = field(default_factory=Counter)
    skipped: dict[str, str] = field(default_factory=dict)

    def merge(self, other: CelStats) -> None:
        self.ran.update(other.ran)
        self.skipped.update(other.skipped)


class CelRunner:
    """Compiles each distinct rule once and evaluates it wherever it applies."""

    def __init__(self) -> None:
        self._programs: dict[str, Any] = {}
        self.stats = CelStats()

    def check(self, where: str, value: Any, schema: dict[str, Any]) -> Iterator[Problem]:
        """Every failing rule in ``value`` (already defaulted) under ``schema``."""
        yield from self._walk(where, "", value, schema)

    def _walk(self, where: str, path: str, value: Any, schema: dict[str, Any]) -> Iterator[Problem]:
        for rule in schema.get("x-kubernetes-validations") or []:
            yield from self._run(where, path or "<root>", rule, value, schema)
        if isinstance(value, dict):
            props = schema.get("properties")
            extra = schema.get("additionalProperties")
            for key, sub_value in value.items():
                sub = (props or {}).get(key) if props is not None else (extra if isinstance(extra, dict) else None)
                if sub:
                    yield from self._walk(where, f"{path}.{key}" if path else key, sub_value, sub)
        elif isinstance(value, list) and isinstance(schema.get("items"), dict):
            for index, item in enumerate(value):
                yield from self._walk(where, f"{path}[{index}]", item, schema["items"])

    def _run(self, where: str, path: str, rule: dict[str, Any], value: Any, schema: dict[str, Any]) -> Iterator[Problem]:
        text = rule["rule"]
        if "oldSelf" in text:
            self.stats.skipped[text] = "transition rule (oldSelf): only evaluated on update"
            return
        program = self._programs.get(text)
        if program is None:
            program = self._programs[text] = cel.compile(text)
        context = cel.Context()
        for name, function in _KUBERNETES_FUNCTIONS.items():
            context.add_function(name, function)
        context.add_variable("self", cel_view(value, schema))
        try:
            result = program.execute(context)
        except RuntimeError as error:
            if "Undefined variable or function" in str(error):
                self.stats.skipped[text] = f"not runnable offline: {error}".split(". Check")[0]
                return
            result = error
        except (KeyError, TypeError, ValueError) as error:  # the API server rejects on evaluation errors too
            result = error
        self.stats.ran[text] += 1
        if result is not True:
            detail = "" if result is False else f" (evaluation error: {result!r})"
            message = rule.get("message") or f"failed rule: {text}"
            yield Problem(where, f"{path}: {message}{detail}")
