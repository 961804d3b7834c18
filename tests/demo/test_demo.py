"""``epp demo`` end to end, as a user runs it: exit code, a routed row per request, nothing left running."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

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
    # The default policy sends the later requests sharing the system prompt to the engine that cached it,
    # and that engine reports the reused tokens.
    assert done.stdout.count("same engine as the first with this system prompt") == 2
    shared_rows = [line for line in done.stdout.splitlines() if "shared 7 KB system prompt" in line]
    cached = [int(cells[6]) for cells in (line.split("│") for line in shared_rows)]
    assert cached[0] == 0 and all(c > 1000 for c in cached[1:]), shared_rows


@pytest.mark.e2e
def test_ctrl_c_stops_everything_and_removes_the_work_dir(tmp_path: Path) -> None:
    env = os.environ | {"TMPDIR": str(tmp_path)}  # the demo's work dir goes here, so it can be checked
    demo = subprocess.Popen([sys.executable, "-m", "epp", "demo"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env)  # fmt: skip
    try:
        assert demo.stdout is not None
        assert demo.stdout.readline().startswith("Starting 3 local engines")
        time.sleep(1.0)  # engines starting
        demo.send_signal(signal.SIGINT)
        out, err = demo.communicate(timeout=60)
    finally:
        if demo.poll() is None:
            demo.kill()
            demo.wait()
    assert demo.returncode == 130, out + err
    assert err.strip().splitlines() == ["epp demo: interrupted; stopped Envoy, epp and the engines"], err
    assert list(tmp_path.iterdir()) == []
