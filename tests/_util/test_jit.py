"""``compiled``: one signature, no silent recompiles, and no crash where numba cannot cache."""

from __future__ import annotations

import logging

import numpy as np
import numpy.typing as npt
import pytest

from epp._util.jit import compiled


def _total(values: npt.NDArray[np.float64], scale: float) -> float:
    out = 0.0
    for v in values:
        out += v * scale
    return out


def _total_uncacheable(values: npt.NDArray[np.float64], scale: float) -> float:
    out = 0.0
    for v in values:
        out += v * scale
    return out


SIGNATURE = "float64(float64[::1], float64)"


def test_compiled_runs_its_one_signature_and_refuses_others() -> None:
    total = compiled(_total, SIGNATURE)
    assert total(np.array([1.0, 2.0]), 2.0) == 6.0
    assert compiled(_total, SIGNATURE) is total  # once per process
    with pytest.raises(TypeError):  # another type is an error, never a compile on the pick path
        total(np.array([1, 2]), 2.0)


def test_without_a_writable_cache_directory_it_compiles_uncached_and_says_so(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from numba.core import caching

    def unwritable(self: object) -> None:
        raise PermissionError("read-only file system")

    monkeypatch.setattr(caching._CacheLocator, "ensure_cache_path", unwritable)
    with caplog.at_level(logging.WARNING, logger="epp._util.jit"):
        total = compiled(_total_uncacheable, SIGNATURE)
    assert total(np.array([1.0, 2.0]), 2.0) == 6.0
    assert "numba cannot cache _total_uncacheable" in caplog.text and "NUMBA_CACHE_DIR" in caplog.text
