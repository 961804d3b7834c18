"""The soak's verdict logic on hand-made data: attribution, quantiles, leak window, phases."""

from __future__ import annotations

import pytest

from epp.envoy.accesslog import AccessLogEntry
from epp.soak.observe import Sample, parse_metrics, quantile
from epp.soak.plan import EPP, FaultEvent, FaultKind, default_plan
from epp.soak.report import build_report, explain, render
from epp.soak.traffic import Outcome, Shape

ENGINES = {"e0": "127.0.0.1:1000", "e1": "127.0.0.1:1001", "e2": "127.0.0.1:1002", "e3": "127.0.0.1:1003"}
SHAPE = Shape("/v1/completions", False, 1000)


def failed(start: float, end: float, cause: str = "http-503", rid: str = "r") -> Outcome:
    return Outcome(rid, "fail-closed", SHAPE, start, end, 503, cause)


def event(kind: FaultKind, target: str, started: float, ended: float, joins: str | None = None) -> FaultEvent:
    return FaultEvent(kind, started, ended - started, target, joins, started, ended)


def test_engine_fault_explains_only_failures_at_its_engine_or_without_upstream() -> None:
    kill = event(FaultKind.ENGINE_KILL, "e0", 10, 14)
    assert explain(failed(11, 12), [kill], {"r": "127.0.0.1:1000"}, ENGINES) is kill
    assert explain(failed(11, 12), [kill], {"r": None}, ENGINES) is kill
    assert explain(failed(11, 12), [kill], {"r": "127.0.0.1:1001"}, ENGINES) is None  # another engine: unexplained
    assert explain(failed(15, 15.5), [kill], {}, ENGINES) is kill  # within the grace after recovery
    assert explain(failed(17, 18), [kill], {}, ENGINES) is None
    assert explain(failed(2, 9), [kill], {}, ENGINES) is None


def test_epp_faults_explain_any_failure_and_membership_covers_the_joining_engine() -> None:
    restart = event(FaultKind.EPP_SIGKILL, EPP, 5, 7)
    assert explain(failed(6, 6.1), [restart], {"r": "127.0.0.1:1002"}, ENGINES) is restart
    members = event(FaultKind.MEMBERSHIP, "e1", 20, 24, joins="e3")
    assert explain(failed(21, 22), [members], {"r": "127.0.0.1:1003"}, ENGINES) is members


def test_quantile_interpolates_inside_the_bucket() -> None:
    buckets = ((0.001, 50.0), (0.002, 100.0), (float("inf"), 100.0))
    assert quantile(buckets, 0.5) == pytest.approx(0.001)
    assert quantile(buckets, 0.99) == pytest.approx(0.00198)
    assert quantile(((float("inf"), 0.0),), 0.99) is None


def test_parse_metrics_reads_the_pick_histogram_and_fill_gauges() -> None:
    text = ("inference_extension_scheduler_e2e_duration_seconds_bucket{le=\"0.001\"} 3\n"
            "inference_extension_scheduler_e2e_duration_seconds_bucket{le=\"+Inf\"} 4\n"
            "epp_extproc_streams 2\nother_metric 9\n")
    buckets, gauges = parse_metrics(text)
    assert buckets == ((0.001, 3.0), (float("inf"), 4.0)) and gauges == {"epp_extproc_streams": 2.0}


def sample(t: float, pid: int, rss: int, count: float) -> Sample:
    return Sample(t, pid, rss, 20, ((0.001, count), (float("inf"), count)))


def test_report_counts_attributes_and_judges_the_last_process() -> None:
    events = [event(FaultKind.EPP_SIGTERM, EPP, 10, 12), event(FaultKind.ENGINE_KILL, "e0", 40, 44)]
    outcomes = [
        Outcome("ok", "fail-open", SHAPE, 1, 2, 200),
        Outcome("drained", "fail-closed", SHAPE, 9, 11, 200),  # in flight at SIGTERM, finished
        Outcome("bad", "fail-closed", Shape("/v1/chat/completions", False, 0, "no-model"), 3, 3.1, 400),
        failed(11, 11.5, rid="restart"),
        failed(41, 42, rid="kill"),
        failed(60, 61, rid="mystery"),
    ]
    access = {"kill": AccessLogEntry.from_json(b'{"request_id": "kill", "upstream": "127.0.0.1:1000"}'),
              "mystery": AccessLogEntry.from_json(b'{"request_id": "mystery", "upstream": "127.0.0.1:1001"}')}
    samples = [sample(t, 1, 100, t) for t in range(0, 12)] + [sample(t, 2, 100 + t // 10, t * 2) for t in range(13, 100)]
    report = build_report(100, outcomes, 0, events, samples, access, ENGINES)
    assert (report.sent, report.succeeded, report.refused_as_expected) == (6, 2, 1)
    assert [o.request_id for o in report.unexplained] == ["mystery"]
    assert report.failures_by_fault == {"epp-sigterm:epp via fail-closed": 1, "engine-kill:e0 via fail-closed": 1}
    assert (report.drain_in_flight, report.drain_failed) == (1, 0)
    assert report.leak is not None and report.leak.samples == 80  # pid 2 only, from 20 s on
    assert report.leak.rss_start == 102 and report.leak.rss_end == 109
    assert set(report.p99_pick_ms) == {"warm-up", "epp-sigterm:epp", "steady", "engine-kill:e0"}
    assert "unexplained: mystery" in render(report)


def test_default_plan_covers_every_fault_in_order_without_overlap() -> None:
    plan = default_plan(600, ["e0", "e1", "e2"], "e3")
    assert {e.kind for e in plan} == set(FaultKind)
    ends = [e.at + e.duration for e in plan]
    assert all(nxt.at > end for nxt, end in zip(plan[1:], ends, strict=False))
    with pytest.raises(ValueError):
        default_plan(600, ["e0", "e1"], "e3")
