"""The models file: accepted shapes, errors that name the problem, change detection and reload."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

from epp.bbr.catalog import CatalogError, ModelCatalog, ModelEntry
from epp.bbr.models_file import ModelsFile, ModelsFileWatcher, parse_models_yaml

OWN_SHAPE = """
models:
- baseModel: llama
  adapters: [sql-lora, ski-resorts]
  engine: vLLM
- baseModel: qwen
"""

GIE_CONFIGMAP_DATA = """
baseModel: deepseek/r1
adapters: |
  - movie-critique
  - ski-resorts-v2
"""

CONFIGMAP_LIST = """
apiVersion: v1
kind: List
items:
- apiVersion: v1
  kind: ConfigMap
  metadata: {name: a, labels: {inference.networking.k8s.io/bbr-managed: "true"}}
  data: {baseModel: base-a, adapters: "- lora-a\\n"}
- apiVersion: v1
  kind: ConfigMap
  metadata: {name: b}
  data: {baseModel: base-b}
"""


def test_own_shape() -> None:
    entries = parse_models_yaml(OWN_SHAPE)
    vllm = frozenset({"vllm"})
    assert entries == [
        ModelEntry("llama", "llama", vllm),
        ModelEntry("sql-lora", "llama", vllm),
        ModelEntry("ski-resorts", "llama", vllm),
        ModelEntry("qwen", "qwen"),
    ]


def test_gie_configmap_data_with_adapters_as_a_string() -> None:
    assert parse_models_yaml(GIE_CONFIGMAP_DATA) == [
        ModelEntry("deepseek/r1", "deepseek/r1"),
        ModelEntry("movie-critique", "deepseek/r1"),
        ModelEntry("ski-resorts-v2", "deepseek/r1"),
    ]


def test_configmaps_in_a_list_and_several_documents() -> None:
    text = CONFIGMAP_LIST + "\n---\n" + GIE_CONFIGMAP_DATA + "\n---\n"
    names = {e.name: e.base_model for e in parse_models_yaml(text)}
    assert names == {
        "base-a": "base-a", "lora-a": "base-a", "base-b": "base-b",
        "deepseek/r1": "deepseek/r1", "movie-critique": "deepseek/r1", "ski-resorts-v2": "deepseek/r1",
    }


def test_empty_file_has_no_models() -> None:
    assert parse_models_yaml("") == []
    assert parse_models_yaml("---\n# nothing yet\n---\n") == []


BAD = [
    ("models: [", "not valid YAML"),
    ("- baseModel: x", "must be a mapping"),
    ("models: {baseModel: x}", "'models' must be a list"),
    ("models: []\nextra: 1", "unexpected keys"),
    ("baseModel: x\nadapter: [y]", "unknown keys ['adapter']"),
    ("adapters: [y]", "'baseModel' must be a non-empty string"),
    ("baseModel: ''", "'baseModel' must be a non-empty string"),
    ("baseModel: x\nadapters: [1]", "list of non-empty strings"),
    ("baseModel: x\nadapters: '- [unclosed'", "not a YAML list"),
    ("baseModel: x\nengine: [vllm]", "'engine' of 'x' must be a string"),
    ("baseModel: x\nengine: 'two words'", "invalid engine name"),
    ("kind: Secret\ndata: {}", "unsupported kind 'Secret'"),
    ("kind: ConfigMap\ndata: [1]", "ConfigMap data must be a mapping"),
    ("models:\n- 7", "must be a mapping with 'baseModel'"),
]


@pytest.mark.parametrize(("text", "message"), BAD, ids=[b[1] for b in BAD])
def test_bad_content_names_the_problem(text: str, message: str) -> None:
    with pytest.raises(CatalogError, match="models.yaml") as info:
        parse_models_yaml(text, "models.yaml")
    assert message in str(info.value)


def write(path: Path, text: str, mtime_ns: int) -> None:
    """Write and force a distinct mtime (two writes within one timestamp tick would look unchanged)."""
    path.write_text(text)
    os.utime(path, ns=(mtime_ns, mtime_ns))


def test_watcher_applies_changes_and_keeps_the_last_good_catalog(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "models.yaml"
    write(path, "baseModel: a", 1_000_000_000)
    file = ModelsFile(path)
    applied: list[ModelCatalog] = []
    watcher = ModelsFileWatcher(file, lambda entries: applied.append(ModelCatalog(entries, restricts=True)))
    assert [e.name for e in file.load()] == ["a"]
    assert not watcher.refresh()  # unchanged since load

    write(path, "baseModel: b\nadapters: [lora]", 2_000_000_000)
    assert watcher.refresh()
    assert applied[-1].get("lora") == ModelEntry("lora", "b")

    with caplog.at_level(logging.WARNING, logger="epp.bbr.models_file"):
        write(path, "baseModel: [broken", 3_000_000_000)
        assert not watcher.refresh()
        assert not watcher.refresh()  # a broken version is reported once, not on every check
    assert len(applied) == 1
    assert sum("ignored" in r.getMessage() for r in caplog.records) == 1

    path.unlink()  # mid-swap: missing for a moment
    assert not watcher.refresh()
    write(path, "baseModel: c", 4_000_000_000)
    assert watcher.refresh()
    assert applied[-1].get("c") is not None and applied[-1].get("lora") is None


def test_watcher_ignores_an_update_that_conflicts(tmp_path: Path) -> None:
    path = tmp_path / "models.yaml"
    write(path, "baseModel: a", 1_000_000_000)
    file = ModelsFile(path)
    file.load()
    applied: list[ModelCatalog] = []
    watcher = ModelsFileWatcher(file, lambda entries: applied.append(ModelCatalog(entries)))
    write(path, "baseModel: a\nadapters: [l]\n---\nbaseModel: b\nadapters: [l]", 2_000_000_000)
    assert not watcher.refresh()
    assert applied == []


def test_unreadable_file_is_a_catalog_error(tmp_path: Path) -> None:
    with pytest.raises(CatalogError, match="cannot read models file"):
        ModelsFile(tmp_path / "missing.yaml").load()
    (tmp_path / "bin.yaml").write_bytes(b"\xff\xfe")
    with pytest.raises(CatalogError, match="cannot read models file"):
        ModelsFile(tmp_path / "bin.yaml").load()
