"""Fixtures for manifest tests: rendering needs kubectl (kustomize); everything else is offline."""

from __future__ import annotations

import functools
import shutil
from pathlib import Path
from typing import Any

import pytest

from tests.manifests.validate import MANIFESTS, Validator, cluster_objects, render

FIXTURES = Path(__file__).resolve().parent / "fixtures"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    if shutil.which("kubectl") is not None:
        return
    skip = pytest.mark.skip(reason="kubectl (with built-in kustomize) is not installed; manifests cannot be rendered")
    for item in items:
        if "needs_kubectl" in item.fixturenames:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def needs_kubectl() -> None:
    """Marker fixture: the test renders kustomizations."""


@pytest.fixture(scope="session")
def validator(needs_kubectl: None) -> Validator:
    return Validator(cluster_objects=cluster_objects())


@functools.cache
def _rendered(relative: str) -> tuple[dict[str, Any], ...]:
    return tuple(render(MANIFESTS / relative))


@pytest.fixture(scope="session")
def rendered(needs_kubectl: None) -> Any:
    """``rendered("overlays/istio")`` -> objects, cached for the session (treat as read-only)."""
    return _rendered


def find(objects: Any, kind: str, name: str | None = None) -> list[dict[str, Any]]:
    return [o for o in objects if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)]


def one(objects: Any, kind: str, name: str | None = None) -> dict[str, Any]:
    found = find(objects, kind, name)
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]
