"""Offline replay with ``ClusterSpec.roles``: a disaggregated request prefills on a prefill engine, its KV
moves, it decodes on a decode engine; the scheduler sees the same request path as ``epp serve``."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from epp._util.clock import VirtualClock
from epp.director import RoutingDecision
from epp.replay.cli import _roles
from epp.replay.offline import ClusterSpec, OfflineReplay, RunResult
from epp.replay.policies import resolve
from epp.replay.summary import summarize
from epp.replay.traces import SegmentPrompt, TraceRequest
from epp.request.usage import Usage

CONFIGS = Path(__file__).parents[1] / "config" / "upstream_pd"
SIM_PD = str(CONFIGS / "llm-d__llm-d-router__deploy__config__sim-pd-epp-config.yaml")  # prefix decider, 16 tokens
ROLES = ("prefill", "prefill", "decode", "decode")


def run(trace: list[TraceRequest], roles: tuple[str, ...], engines: int = 4) -> tuple[OfflineReplay, RunResult]:
    clock = VirtualClock()
    driver = OfflineReplay(trace, [resolve(SIM_PD).build(clock, 0)], ClusterSpec(engines=engines, roles=roles), clock)
    return driver, driver.run()


def test_long_uncached_prompts_prefill_remotely_and_a_repeat_stays_on_its_decode_engine() -> None:
    trace = [TraceRequest(float(i), SegmentPrompt(((1_000_000 * (i + 1), 1024),)), 8) for i in range(4)]
    trace.append(TraceRequest(10.0, SegmentPrompt(((1_000_000, 1024),)), 8))  # request 0 again
    driver, result = run(trace, ROLES)
    records = driver.records
    assert [r.prefill_engine in (0, 1) for r in records[:4]] == [True] * 4
    assert all(r.engine in (2, 3) for r in records)
    repeat = records[4]
    assert repeat.prefill_engine == -1 and repeat.engine == records[0].engine  # cached: decoded in place
    for r in records:
        assert r.first_token is not None and r.finish is not None and r.output_tokens == 8
    # the decode engines received the KV: each prefill engine computed, each decode engine hit
    prefill_stats = [driver.engines[i].stats() for i in (0, 1)]
    decode_stats = [driver.engines[i].stats() for i in (2, 3)]
    assert sum(s.prompt_tokens_total for s in prefill_stats) == 4 * 1024
    assert sum(s.prefix_cache_hits for s in decode_stats) >= 5 * (1024 - 16)
    assert sum(s.generation_tokens_total for s in decode_stats) == 5 * 8
    assert all(s.inflight_requests == 0 for s in driver.datastores[0].endpoints())
    assert driver.recorders[0].routed[0] == 5  # the director routed each request once: the prefill half is not its
    summary = summarize(result, "sim-pd", 1.0, 0, 0)
    assert summary["disaggregated"] == 4 and summary["tpot_p90"] is not None


def test_aggregated_pool_runs_the_same_config_without_disaggregating() -> None:
    trace = [TraceRequest(float(i), SegmentPrompt(((1_000_000 * (i + 1), 1024),)), 8) for i in range(4)]
    _, result = run(trace, ())
    assert all(r.prefill_engine == -1 and r.finish is not None for r in result.records)


def test_roles_flag() -> None:
    assert _roles("prefill:2,decode:1") == ("prefill", "prefill", "decode")
    for bad in ("prefill:2", "gpu:1", "decode:0", "decode"):
        with pytest.raises(argparse.ArgumentTypeError):
            _roles(bad)
    with pytest.raises(ValueError, match="3 roles for 4 engines"):
        ClusterSpec(engines=4, roles=("decode",) * 3)


def test_the_director_hears_each_disaggregated_request_start_and_finish_once_from_its_decode_engine() -> None:
    """As in ``epp serve``, where the sidecar runs the prefill: the picker's hooks see the decode request only."""
    trace = [TraceRequest(float(i), SegmentPrompt(((1_000_000 * (i + 1), 1024),)), 8) for i in range(3)]
    clock = VirtualClock()
    driver = OfflineReplay(trace, [resolve(SIM_PD).build(clock, 0)], ClusterSpec(engines=4, roles=ROLES), clock)
    director = driver.directors[0]
    heard: list[tuple[str, str, str]] = []
    started, finish = director.response_started, director.finish

    def on_started(decision: RoutingDecision) -> None:
        heard.append(("started", decision.request.request_id, decision.endpoints[0].name))
        started(decision)

    def on_finish(decision: RoutingDecision, usage: Usage | None = None, response_bytes: int | None = None) -> None:
        heard.append(("finish", decision.request.request_id, decision.endpoints[0].name))
        finish(decision, usage, response_bytes)

    director.response_started, director.finish = on_started, on_finish  # type: ignore[method-assign]
    driver.run()
    for i, record in enumerate(driver.records):
        assert record.prefill_engine in (0, 1)
        decode = f"engine-{record.engine}"
        assert [h for h in heard if h[1] == str(i)] == [("started", str(i), decode), ("finish", str(i), decode)]
