"""The calibrated latency model against the H100 measurements it was fitted to."""

from __future__ import annotations

import pytest

from epp.engine.calibration import H100
from epp.engine.config import PROFILES, EngineConfig
from epp.engine.latency import compute_bound_prefill_rows, fit_prefill, relative_errors


MEASURED = sorted(name for name, p in PROFILES.items() if p.linear_scale == p.attention_scale == 1.0)
"""Profiles whose own model was measured (the others are derived from one that was)."""


@pytest.mark.parametrize("profile", MEASURED)
def test_model_is_within_15_percent_of_compute_bound_points(profile: str) -> None:
    cal = PROFILES[profile].calibration
    model = EngineConfig(profile=profile).latency_model()
    rows = compute_bound_prefill_rows(cal)
    assert len(rows) >= 2
    assert all(abs(e) <= 0.15 for e in relative_errors(model, rows)), relative_errors(model, rows)
    assert fit_prefill(cal).max_relative_error <= 0.15


@pytest.mark.parametrize("profile", MEASURED)
def test_model_stays_below_the_eager_measurements(profile: str) -> None:
    """Cached-prefix prefill rows and decode rows were measured without CUDA graphs and with eager
    attention: they are upper bounds."""
    cal = PROFILES[profile].calibration
    model = EngineConfig(profile=profile).latency_model()
    assert all(e <= 0.15 for e in relative_errors(model, cal.prefill_ms))
    assert all(model.decode(b, c) <= ms * 1e-3 for b, c, ms in cal.decode_ms)


def test_compute_bound_rows_are_the_cold_large_prefills() -> None:
    assert [n for _, n, _ in compute_bound_prefill_rows(H100["llama-3.1-8b"])] == [2048, 8192, 16384]
    assert [n for _, n, _ in compute_bound_prefill_rows(H100["llama-3.2-1b"])] == [8192, 16384]


def test_decode_is_cuda_graph_like_and_grows_with_kv_read() -> None:
    model = EngineConfig().latency_model()
    assert 0.006 <= model.decode(1, 512) <= 0.010
    assert model.decode(64, 8192) > model.decode(64, 512) > model.decode(1, 512)


def test_prefix_hit_makes_prefill_cheaper_and_floor_is_configurable() -> None:
    model = EngineConfig().latency_model()
    assert model.prefill(4096, 512) < model.prefill(0, 4608) / 3
    floored = EngineConfig(step_floor_seconds=0.03).latency_model()
    assert floored.decode(1, 512) == pytest.approx(model.decode(1, 512) + 0.028)


def test_jitter_is_seeded() -> None:
    a = EngineConfig(latency_jitter=0.1, seed=3).latency_model()
    b = EngineConfig(latency_jitter=0.1, seed=3).latency_model()
    plain = EngineConfig().latency_model()
    samples = [a.decode(8, 1000) for _ in range(5)]
    assert samples == [b.decode(8, 1000) for _ in range(5)]
    assert len(set(samples)) == 5
    assert all(abs(s / plain.decode(8, 1000) - 1) <= 0.1 for s in samples)


def test_the_70b_class_profile_is_slower_per_token_than_the_8b_and_holds_as_much_kv() -> None:
    big, small = EngineConfig(profile="llama-3.1-70b-h100-tp4"), EngineConfig(profile="llama-3.1-8b-h100")
    ratio = big.latency_model().prefill(0, 8192) / small.latency_model().prefill(0, 8192)
    assert 2.0 <= ratio <= 3.0
    assert 1.5 <= big.latency_model().decode(32, 2048) / small.latency_model().decode(32, 2048) <= 2.5
    assert 0.8 <= big.total_gpu_blocks / small.total_gpu_blocks <= 1.5  # four GPUs' KV for a 9× model
