"""A one-minute soak in the normal suite: every failure is explained by an injected fault, and no leak.

Same topology and fault story as ``bench/soak.py`` (which runs it for ten minutes), at a lower rate.
Tolerances suit a noisy shared 2-core box: RSS of the last epp process may grow 15% over the last 80%
of the minute (the ten-minute run is held to 5% in bench/RESULTS.md), open FDs by at most 8.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from epp.soak.plan import FaultKind
from epp.soak.report import render
from epp.soak.runner import SoakConfig, run_soak

pytestmark = pytest.mark.e2e


async def test_one_minute_soak_has_no_unexplained_failure_and_no_leak(tmp_path: Path) -> None:
    report = await run_soak(SoakConfig(duration=60, rate=6, max_inflight=32), tmp_path)
    summary = render(report)
    print(summary)
    assert report.sent >= 300 and report.succeeded >= report.sent * 0.6, summary
    assert report.refused_as_expected > 0, summary  # malformed requests were sent and refused cleanly
    assert not report.unexplained, summary
    assert {e.kind for e in report.events if e.ended is not None} == set(FaultKind), summary
    assert report.drain_in_flight > 0 and report.drain_failed == 0, summary  # SIGTERM let in-flight streams finish
    assert report.per_gateway["fail-open"].get("failed", 0) < report.per_gateway["fail-closed"].get("failed", 0), summary
    assert report.leak is not None, summary
    assert report.leak.rss_growth <= 0.15 and report.leak.fds_end - report.leak.fds_start <= 8, summary
