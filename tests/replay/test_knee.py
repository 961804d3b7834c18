"""The knee search, on latency curves whose knee is known."""

from __future__ import annotations

import pytest

from epp.replay.knee import find_knee, unloaded_scale


def curve(knee: float):  # type: ignore[no-untyped-def]
    """TTFT p90 flat at 0.1 s below ``knee``×, ten times higher above."""
    calls: list[float] = []

    def probe(scale: float) -> float:
        calls.append(scale)
        return 0.1 if scale < knee else 1.0

    return probe, calls


@pytest.mark.parametrize("true_knee", [0.3, 1.7, 5.0])
def test_brackets_the_knee_from_either_side(true_knee: float) -> None:
    probe, calls = curve(true_knee)
    knee = find_knee("p", mean_rate=2.0, probe=probe)
    assert calls[0] == unloaded_scale(2.0)
    assert knee.unloaded_ttft_p90 == 0.1 and knee.threshold == 0.2
    assert knee.crossed and knee.rate_scale is not None
    assert knee.rate_scale < true_knee <= knee.rate_scale * 2 ** (1 / 16) * 1.0001
    assert knee.rate_rps == pytest.approx(knee.rate_scale * 2.0)


def test_reports_when_the_knee_is_beyond_every_probe() -> None:
    probe, _ = curve(1e9)
    knee = find_knee("p", mean_rate=1.0, probe=probe)
    assert not knee.crossed and knee.rate_scale == 2.0**9
