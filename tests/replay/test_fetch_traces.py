"""bench/fetch_traces.py: what it keeps is byte-for-byte the published trace, or nothing (no network here:
the mirror path and the 30-minute cut are what can be checked offline)."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "bench" / "fetch_traces.py"


@pytest.fixture(scope="module")
def fetch_traces() -> ModuleType:
    spec = importlib.util.spec_from_file_location("fetch_traces", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_the_cut_keeps_earlier_lines_unmodified(fetch_traces: ModuleType) -> None:
    lines = [json.dumps({"timestamp": t, "hash_ids": [1]}).encode() + b"\n" for t in (0, 1_799_999, 1_800_000, 5)]
    assert list(fetch_traces.cut(lines, 1_800_000)) == [lines[0], lines[1], lines[3]]


def test_a_mirror_copy_is_kept_only_with_the_published_checksum(fetch_traces: ModuleType, tmp_path: Path) -> None:
    mirror, dest = tmp_path / "mirror", tmp_path / "dest"
    mirror.mkdir()
    dest.mkdir()
    good = b"TIMESTAMP,ContextTokens,GeneratedTokens\n"
    trace = fetch_traces.PublicTrace("t.csv", "https://example.invalid/t.csv", hashlib.sha256(good).hexdigest())
    (mirror / "t.csv").write_bytes(good + b"tampered\n")
    with pytest.raises(fetch_traces.FetchError, match="is not the published"):
        fetch_traces.fetch(trace, dest, mirror)
    assert list(dest.iterdir()) == []
    (mirror / "t.csv").write_bytes(good)
    assert fetch_traces.fetch(trace, dest, mirror) == "copied"
    assert fetch_traces.fetch(trace, dest, mirror) == "already there"
    assert (dest / "t.csv").read_bytes() == good
