"""Every upstream EndpointPickerConfig either loads or is listed, with owner and reason, in
``data/corpus-expectations.yaml``; a listed one that starts loading fails here so the list stays true."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.config.corpus import CORPUS, config_files, expectations, load_error

TABLE = expectations()
OWNERS = {"#19 plugins", "#19 learned", "#19 tokenizer", "#20 P/D", "flow control", "upstream-invalid"}


def test_corpus_is_complete_and_the_table_names_only_its_files() -> None:
    files = {p.name for p in config_files()}
    index = json.loads((CORPUS / "collected-index.json").read_text())
    assert (CORPUS / "SOURCES.md").is_file()
    assert files == {entry["file"] for entry in index} and len(files) == 117
    assert set(TABLE.placeholders) <= files and set(TABLE.failures) <= files
    assert not set(TABLE.placeholders) & set(TABLE.failures)
    assert {owner for owner, _ in TABLE.failures.values()} <= OWNERS


@pytest.mark.parametrize("path", config_files(), ids=lambda p: p.name[:90])
def test_config_loads_or_is_listed(path: Path) -> None:
    error = load_error(path)
    if path.name in TABLE.placeholders:
        assert error is not None, f"placeholder {path.name} loads: a picker should not accept it"
    elif path.name in TABLE.failures:
        owner, reason = TABLE.failures[path.name]
        assert error is not None, (
            f"{path.name} now loads: delete its entry ({owner}: {reason}) from tests/config/data/corpus-expectations.yaml")
        assert "\n" not in error  # a clean one-line start-up error, never a traceback
    else:
        assert error is None, f"{path.name} no longer loads: {error}"
