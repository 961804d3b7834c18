"""Live replay (real ``epp sim`` engines, ``epp serve``, Envoy) agrees with offline replay.

Tolerances: the same requests complete; the hit ratio within 0.05 (routing can differ: live metrics
are scraped on the wall clock and ties are broken by another generator); TTFT p50 within 0.25 s
(process, proxy and ext_proc overhead at time scale 1 on a busy 2-core machine).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from epp.cli import main
from epp.envoy.accesslog import read_entries

pytestmark = pytest.mark.e2e

TRACE = ["--synthetic", "shared-prefix", "--sp-groups", "3", "--sp-prompts-per-group", "4", "--sp-system-len", "512",
         "--sp-question-len", "32", "--sp-output-len", "8", "--sp-rate", "20", "--engines", "2",
         "--policy", "gie-default", "--json"]  # fmt: skip


def test_live_matches_offline(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["replay", *TRACE]) == 0
    (offline,) = json.loads(capsys.readouterr().out)
    assert main(["replay", *TRACE, "--live", "--out", str(tmp_path)]) == 0
    (live,) = json.loads(capsys.readouterr().out)
    assert live["requests"] == live["completed"] == offline["completed"] == 12
    assert live["shed"] == 0
    assert live["hit_ratio"] == pytest.approx(offline["hit_ratio"], abs=0.05)
    assert live["hit_ratio"] > 0.5  # the shared system prompts really were served from cache
    assert abs(live["ttft_p50"] - offline["ttft_p50"]) < 0.25
    entries = read_entries(tmp_path / "live" / "access.log")  # every request went through Envoy to an engine
    assert len(entries) == 12 and all(e.code == 200 and e.upstream for e in entries)
