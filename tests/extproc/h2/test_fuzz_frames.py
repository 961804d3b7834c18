"""Hypothesis over HTTP/2 frame sequences against the native transport serving the real picker (the
invariants are in fuzz_frames.py). 200 seeded examples here; ``bench/fuzz_h2.py --examples N`` runs longer."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, given, seed, settings

from tests.extproc.h2.fuzz_frames import FrameFuzz, Op, sequences


@pytest.fixture(scope="module")
def fuzz() -> Iterator[FrameFuzz]:
    owned = FrameFuzz()
    try:
        yield owned
    finally:
        owned.close()


@seed(18)
@settings(max_examples=200, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.function_scoped_fixture])
@given(sequence=sequences)
def test_any_frame_sequence_ends_cleanly_and_the_server_keeps_serving(fuzz: FrameFuzz, sequence: list[Op]) -> None:
    fuzz.check(sequence)


def test_the_fuzzing_reached_every_outcome(fuzz: FrameFuzz) -> None:
    """Runs after the examples: they exercised both live connections and GOAWAYs, or the fuzzer is blind."""
    kinds = {outcome.split()[0] for outcome in fuzz.outcomes}
    assert {"acked", "goaway"} <= kinds, fuzz.outcomes
