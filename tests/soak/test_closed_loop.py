"""Issue #16's closed-loop engine kill, reduced to seconds: real Envoy → ``epp serve`` (no config) → three
``epp sim``; six clients in a closed loop; one engine SIGKILLed, then restarted.

Without gateway retries only the requests epp sends before it ejects the engine may fail: those in
flight at the kill plus ``--endpoint-health-consecutive-failures`` (3); with the shipped retry policy
(override_host + epp's fallback list) none may. The killed engine must be back in service at the end,
and epp's descriptors flat. The full 150-second run is ``bench/soak.py --closed-loop``.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from epp.soak.closed_loop import ClosedLoopConfig, render, run_closed_loop

pytestmark = pytest.mark.e2e

CLIENTS = 6
CONSECUTIVE_FAILURES = 3


@pytest.mark.parametrize("retries", [False, True], ids=["no-retries", "retry-policy"])
async def test_a_killed_engine_loses_its_traffic_and_comes_back(tmp_path: Path, retries: bool) -> None:
    # 8 s after the restart: time for a slow engine start on a busy box, a good scrape and a trial request
    config = ClosedLoopConfig(duration=15, kill_at=3, down_for=4, clients=CLIENTS, retries=retries)
    report = await run_closed_loop(config, tmp_path)
    summary = render([report])
    print(summary)
    down = report.phases[1]
    assert down.sent >= 50, summary  # the two live engines kept serving while the third was dead
    assert report.failed <= (0 if retries else CLIENTS + CONSECUTIVE_FAILURES), summary
    assert report.victim_health.get("ejections", 0) >= 1, summary
    assert report.victim_health.get("healthy") == 1.0, summary  # back after a good scrape and a trial request
    assert report.fds_end - report.fds_start <= 4, summary
