"""The models file (``--models-file``): YAML listing base models, their LoRA adapters and engines.

Accepted documents (several may follow each other, separated by ``---``)::

    models:                          # epp's own shape
    - baseModel: meta-llama/Llama-3.1-8B-Instruct
      adapters: [sql-lora, ski-resorts]
      engine: vllm                   # optional: only this engine serves it (X-Gateway-Engine)
    - baseModel: Qwen/Qwen3-32B
      engine: sglang

    baseModel: deepseek/r1           # one entry: the data of a GIE router ConfigMap
    adapters: |                      # (adapters may be a YAML list inside a string, as in ConfigMap data)
      - movie-critique

    kind: ConfigMap                  # a whole ConfigMap, or a `kind: List` of them (kubectl get -o yaml)
    data: {baseModel: ..., adapters: ...}

Unknown keys are errors, so a typo cannot silently drop a model. Files mounted from a ConfigMap change
in place; ``ModelsFileWatcher`` re-reads the file when it changes and keeps the last good catalog when
the new content is broken.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import yaml

from epp.bbr.catalog import CatalogError, ModelEntry, engine_name

log = logging.getLogger(__name__)

ENTRY_KEYS = frozenset({"baseModel", "adapters", "engine"})


def parse_models_yaml(text: str, source: str = "models file") -> list[ModelEntry]:
    """Every entry of every document in ``text``; raises ``CatalogError`` naming ``source`` on bad content."""
    try:
        documents = [d for d in yaml.safe_load_all(text) if d is not None]
    except yaml.YAMLError as exc:
        raise CatalogError(f"{source}: not valid YAML: {exc}") from None
    entries: list[ModelEntry] = []
    for document in documents:
        entries += _document(document, source)
    return entries


def _document(doc: Any, source: str) -> list[ModelEntry]:
    if not isinstance(doc, dict):
        raise CatalogError(f"{source}: each document must be a mapping, got {type(doc).__name__}")
    kind = doc.get("kind")
    if kind == "List":
        return [entry for item in _list(doc.get("items"), "items", source) for entry in _document(item, source)]
    if kind == "ConfigMap":
        data = doc.get("data") or {}
        if not isinstance(data, dict):
            raise CatalogError(f"{source}: ConfigMap data must be a mapping")
        return _entry(data, f"{source} (ConfigMap {doc.get('metadata', {}).get('name', '?')})")
    if kind is not None:
        raise CatalogError(f"{source}: unsupported kind {kind!r} (expected ConfigMap or List)")
    if "models" in doc:
        if set(doc) != {"models"}:
            raise CatalogError(f"{source}: unexpected keys next to 'models': {sorted(set(doc) - {'models'})}")
        return [e for item in _list(doc["models"], "models", source) for e in _entry(item, source)]
    return _entry(doc, source)


def _list(value: Any, key: str, source: str) -> list[Any]:
    if not isinstance(value, list):
        raise CatalogError(f"{source}: '{key}' must be a list")
    return value


def _entry(item: Any, source: str) -> list[ModelEntry]:
    if not isinstance(item, dict):
        raise CatalogError(f"{source}: a model entry must be a mapping with 'baseModel'")
    unknown = set(item) - ENTRY_KEYS
    if unknown:
        raise CatalogError(f"{source}: unknown keys {sorted(unknown)} (allowed: {sorted(ENTRY_KEYS)})")
    base = item.get("baseModel")
    if not isinstance(base, str) or not base.strip():
        raise CatalogError(f"{source}: 'baseModel' must be a non-empty string")
    base = base.strip()
    engine = item.get("engine")
    if engine is not None and not isinstance(engine, str):
        raise CatalogError(f"{source}: 'engine' of {base!r} must be a string")
    engines = frozenset() if engine is None else frozenset({_engine(engine, source)})
    names = [base, *_adapters(item.get("adapters"), base, source)]
    return [ModelEntry(name, base, engines) for name in names]


def _engine(value: str, source: str) -> str:
    try:
        return engine_name(value)
    except CatalogError as exc:
        raise CatalogError(f"{source}: {exc}") from None


def _adapters(value: Any, base: str, source: str) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):  # ConfigMap data values are strings holding a YAML list
        try:
            value = yaml.safe_load(value)
        except yaml.YAMLError as exc:
            raise CatalogError(f"{source}: adapters of {base!r} are not a YAML list: {exc}") from None
        if value is None:
            return []
    if not isinstance(value, list) or not all(isinstance(a, str) and a.strip() for a in value):
        raise CatalogError(f"{source}: adapters of {base!r} must be a list of non-empty strings")
    return [a.strip() for a in value]


class ModelsFile:
    """A models file on disk; ``changed`` tells whether it differs from what ``load`` read last."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._stamp: tuple[int, int, int] | None = None

    def _current_stamp(self) -> tuple[int, int, int]:
        # ConfigMap volumes swap a symlink (new inode); editors rewrite in place (mtime/size).
        st = self.path.stat()
        return (st.st_ino, st.st_mtime_ns, st.st_size)

    def load(self) -> list[ModelEntry]:
        """Read and parse the file; raises ``CatalogError`` (also for an unreadable file).

        The version read counts as seen even when it is broken, so a bad update is reported once.
        """
        try:
            self._stamp = self._current_stamp()
            text = self.path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise CatalogError(f"cannot read models file {self.path}: {exc}") from None
        return parse_models_yaml(text, str(self.path))

    def changed(self) -> bool:
        try:
            return self._current_stamp() != self._stamp
        except OSError:
            return False  # briefly missing while a ConfigMap update swaps links: keep what we have


class ModelsFileWatcher:
    """Re-reads ``file`` when it changes and hands the new entries to ``on_change``.

    A broken update is logged and ignored: the router keeps serving with the last good catalog.
    """

    def __init__(self, file: ModelsFile, on_change: Callable[[Iterable[ModelEntry]], None]) -> None:
        self.file = file
        self.on_change = on_change

    def refresh(self) -> bool:
        """One check; True when a new catalog was applied."""
        if not self.file.changed():
            return False
        try:
            entries = self.file.load()
            self.on_change(entries)
        except CatalogError as exc:
            log.warning("models file update ignored, keeping the previous models: %s", exc)
            return False
        return True

    async def run(self, interval: float) -> None:
        """Check every ``interval`` seconds until cancelled."""
        while True:
            await asyncio.sleep(interval)
            self.refresh()
