"""Live replay (real ``epp sim`` engines, ``epp serve``, Envoy) agrees with offline replay.

Tolerances: the same requests complete; the hit ratio within 0.05 (routing can differ: live metrics
are scraped on the wall clock and ties are broken by another generator); TTFT p50 within 0.25 s
(process, proxy and ext_proc overhead at time scale 1 on a busy 2-core machine).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from epp.cli import main
from epp.demo.engines import EngineFleet
from epp.envoy.accesslog import read_entries
from epp.replay.live import LiveSpec, run_live_via
from epp.replay.offline import ClusterSpec
from epp.replay.synthetic import SharedPrefixParams, shared_prefix
from epp.replay.traces.model import TraceRequest

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


def test_live_via_any_front_with_rendered_prompts() -> None:
    """``run_live_via`` sends the trace to whatever URL the front yields (here one engine, no router) with
    the prompts rendered by the caller (here text: one 4-digit word per token, one ``epp sim`` token)."""
    params = SharedPrefixParams(groups=2, prompts_per_group=3, system_len=256, question_len=16, output_len=4, rate=5.0)
    trace = shared_prefix(params, seed=0)

    @contextmanager
    def first_engine(fleet: EngineFleet, workdir: Path) -> Iterator[str]:
        yield f"http://{fleet.upstreams[0].hostport}"

    def as_text(request: TraceRequest) -> str:
        return "".join(f"{t % 10_000:04d}" for t in request.prompt.tokens())

    run = run_live_via(trace.requests, first_engine, ClusterSpec(engines=2), 1.0, LiveSpec(), prompt=as_text)
    assert run.dispatched == (6, 0)
    assert all(r.finish is not None and r.shed is None and r.output_tokens == 4 for r in run.records)
    # text prompts tokenized back to the trace's lengths: later requests of a group reuse exactly the system prompt
    assert max(r.cached_tokens for r in run.records) == 256
