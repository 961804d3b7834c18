"""``epp demo`` end to end, as a user runs it: exit code, a routed row per request, nothing left running."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from epp.demo.traffic import burst_requests, opening_requests


@pytest.mark.e2e
def test_demo_routes_every_request_where_epp_picked_and_stops_everything() -> None:
    env = os.environ | {"COLUMNS": "200"}
    done = subprocess.run([sys.executable, "-m", "epp", "demo", "--engines", "3"], capture_output=True, text=True,
                          timeout=120, env=env, check=False)  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    sent = len(opening_requests()) + 1 + len(burst_requests())
    assert len(re.findall(r"engine-[abc] ✓", done.stdout)) == sent
    assert "✗" not in done.stdout
    assert f"ext_proc streams Envoy opened to epp: {sent}" in done.stdout
    assert "Stopped Envoy, epp and the engines." in done.stdout
