"""The models the body-based router knows: served names → base model and serving engines.

A catalog is built from ``--models`` and/or a models file (see ``epp.bbr.models_file``). It answers two
questions for each request: is this model served at all (``restricts`` → unknown names get 404
``model_not_found``), and which base model and engine(s) does it run on (for the
``X-Gateway-Base-Model-Name`` and ``X-Gateway-Engine`` headers). A base model maps to itself; a LoRA
adapter maps to the base model it is loaded on, as GIE's body-based router does.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

# Engine names end up in a header that HTTPRoutes match exactly: keep them to one lower-case token.
ENGINE_PATTERN = re.compile(r"[a-z0-9][a-z0-9._-]*")


class CatalogError(ValueError):
    """A model list or models file that cannot be used (the message says where and why)."""


@dataclass(frozen=True, slots=True)
class ModelEntry:
    """One name clients may put in ``"model"``; ``engines`` is empty when any engine may serve it."""

    name: str
    base_model: str
    engines: frozenset[str] = frozenset()

    @property
    def is_adapter(self) -> bool:
        return self.name != self.base_model


def engine_name(value: str) -> str:
    """Normalise an engine name (``vLLM`` → ``vllm``); raises ``CatalogError`` if it is not one token."""
    engine = value.strip().lower()
    if not ENGINE_PATTERN.fullmatch(engine):
        raise CatalogError(f"invalid engine name {value!r}: expected letters, digits, '.', '_' or '-'")
    return engine


class ModelCatalog:
    """Immutable lookup table; entries naming the same model merge (engines united), conflicting bases fail.

    ``restricts`` is True when a model list was configured at all: then names outside it are unknown.
    An unconfigured catalog (the default) lets every model through, like GIE's router.
    """

    __slots__ = ("_entries", "restricts")

    def __init__(self, entries: Iterable[ModelEntry] = (), *, restricts: bool = False) -> None:
        merged: dict[str, ModelEntry] = {}
        for entry in entries:
            known = merged.get(entry.name)
            if known is None:
                merged[entry.name] = entry
            elif known.base_model != entry.base_model:
                raise CatalogError(
                    f"model {entry.name!r} is mapped to two base models: {known.base_model!r} and {entry.base_model!r}"
                )
            else:
                # "any engine" (empty) absorbs a specific one: listing a model without engine means no restriction.
                engines = frozenset() if not known.engines or not entry.engines else known.engines | entry.engines
                merged[entry.name] = ModelEntry(entry.name, entry.base_model, engines)
        self._entries = merged
        self.restricts = restricts

    def get(self, model: str) -> ModelEntry | None:
        return self._entries.get(model)

    def __len__(self) -> int:
        return len(self._entries)

    def __iter__(self) -> Iterator[ModelEntry]:
        return iter(self._entries.values())

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ModelCatalog):
            return NotImplemented
        return self._entries == other._entries and self.restricts == other.restricts

    __hash__ = None  # type: ignore[assignment]

    def describe(self) -> str:
        """One log line: how many models, adapters and whether unknown ones are refused."""
        adapters = sum(1 for e in self if e.is_adapter)
        mode = "unknown models get 404" if self.restricts else "every model passes"
        return f"{len(self) - adapters} base model(s), {adapters} adapter(s); {mode}"


def parse_models_flag(text: str) -> list[ModelEntry]:
    """``--models``: comma-separated ``NAME`` (a base model) or ``ADAPTER=BASE`` items; blanks are skipped."""
    entries: list[ModelEntry] = []
    for item in text.split(","):
        item = item.strip()
        if not item:
            continue
        name, sep, base = (part.strip() for part in item.partition("="))
        if not name or (sep and not base):
            raise CatalogError(f"--models item {item!r}: expected NAME or ADAPTER=BASE")
        if sep:
            entries += [ModelEntry(name, base), ModelEntry(base, base)]
        else:
            entries.append(ModelEntry(name, name))
    return entries
