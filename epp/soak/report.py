"""Turning a soak run into verdicts: failures explained by faults, flat memory, pick latency per phase.

A failed request is *explained* when it overlaps a fault's window (plus a short grace) and the fault
could have caused it: epp faults explain any failure; engine faults explain failures whose upstream
(from Envoy's access log) was that engine, or that never reached an engine. Everything else is
*unexplained* — the number the soak exists to keep at zero.
"""

from __future__ import annotations

import statistics
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from epp.envoy.accesslog import AccessLogEntry
from epp.soak.observe import Sample, bucket_delta, quantile
from epp.soak.plan import ATTRIBUTION_GRACE_S, ENGINE_FAULTS, LEAK_WINDOW_START, FaultEvent, FaultKind
from epp.soak.traffic import Outcome

STEADY = "steady"
WARM_UP = "warm-up"
EDGE_SAMPLES = 5  # leak check: medians of this many samples at each end of the window


@dataclass
class Leak:
    """RSS/FD change of the last epp process over the leak window (medians at both ends)."""

    samples: int
    rss_start: float
    rss_end: float
    fds_start: float
    fds_end: float

    @property
    def rss_growth(self) -> float:
        return (self.rss_end - self.rss_start) / self.rss_start if self.rss_start else 0.0


@dataclass
class SoakReport:
    duration: float
    sent: int
    skipped: int
    succeeded: int
    refused_as_expected: int
    failures_by_cause: dict[str, int]
    failures_by_fault: dict[str, int]
    unexplained: list[Outcome]
    per_gateway: dict[str, dict[str, int]]
    drain_in_flight: int
    drain_failed: int
    leak: Leak | None
    p99_pick_ms: dict[str, float | None]
    events: list[FaultEvent] = field(default_factory=list)


def explain(outcome: Outcome, events: Sequence[FaultEvent], upstream_of: Mapping[str, str | None],
            engines: Mapping[str, str]) -> FaultEvent | None:
    """The fault that accounts for a failed request, or None."""
    upstream = upstream_of.get(outcome.request_id)
    for event in events:
        if not event.covers(outcome.start, outcome.end):
            continue
        if event.kind not in ENGINE_FAULTS:
            return event
        targets = {engines.get(event.target), engines.get(event.joins or "")}
        if upstream is None or upstream in targets:
            return event
    return None


def _leak(samples: Sequence[Sample], duration: float) -> Leak | None:
    if not samples:
        return None
    last_pid = samples[-1].pid
    window = [s for s in samples if s.pid == last_pid and s.t >= LEAK_WINDOW_START * duration]
    if len(window) < 2 * EDGE_SAMPLES:
        return None
    head, tail = window[:EDGE_SAMPLES], window[-EDGE_SAMPLES:]
    return Leak(len(window), statistics.median(s.rss_bytes for s in head), statistics.median(s.rss_bytes for s in tail),
                statistics.median(s.fds for s in head), statistics.median(s.fds for s in tail))


def _phases(events: Sequence[FaultEvent], duration: float) -> list[tuple[str, float, float]]:
    """(phase name, start, end): each fault's window, and the steady stretches between them."""
    spans = sorted((e.started, (e.ended or e.started) + ATTRIBUTION_GRACE_S, e.name)
                   for e in events if e.started is not None)
    phases, cursor = [], 0.0
    for start, end, name in spans:
        if start > cursor:
            phases.append((STEADY if cursor else WARM_UP, cursor, start))
        phases.append((name, start, end))
        cursor = max(cursor, end)
    if cursor < duration:
        phases.append((STEADY, cursor, duration))
    return phases


def _p99_by_phase(samples: Sequence[Sample], events: Sequence[FaultEvent], duration: float) -> dict[str, float | None]:
    totals: dict[str, dict[float, float]] = {}
    for name, start, end in _phases(events, duration):
        inside = [s for s in samples if start <= s.t <= end]
        acc = totals.setdefault(name, {})
        for pid in {s.pid for s in inside}:  # a restart inside a phase: count each process separately
            mine = [s for s in inside if s.pid == pid]
            if len(mine) >= 2:
                for bound, count in bucket_delta(mine[0], mine[-1]):
                    acc[bound] = acc.get(bound, 0.0) + count
    out: dict[str, float | None] = {}
    for name, acc in totals.items():
        q = quantile(tuple(sorted(acc.items())), 0.99)
        out[name] = None if q is None else q * 1000
    return out


def build_report(duration: float, outcomes: Sequence[Outcome], skipped: int, events: Sequence[FaultEvent],
                 samples: Sequence[Sample], access: Mapping[str, AccessLogEntry], engines: Mapping[str, str]) -> SoakReport:
    upstream_of = {rid: entry.upstream for rid, entry in access.items()}
    causes: Counter[str] = Counter()
    by_fault: Counter[str] = Counter()
    unexplained: list[Outcome] = []
    gateways: dict[str, Counter[str]] = {}
    for o in outcomes:
        g = gateways.setdefault(o.gateway, Counter())
        g["sent"] += 1
        if o.ok:
            g["ok"] += 1
            continue
        g["failed"] += 1
        causes[o.cause or "?"] += 1
        event = explain(o, events, upstream_of, engines)
        if event is None:
            unexplained.append(o)
        else:
            by_fault[f"{event.name} via {o.gateway}"] += 1
    sigterm = next((e for e in events if e.kind is FaultKind.EPP_SIGTERM and e.started is not None), None)
    in_flight = [o for o in outcomes if sigterm is not None and o.start < sigterm.started < o.end]  # type: ignore[operator]
    return SoakReport(
        duration=duration,
        sent=len(outcomes),
        skipped=skipped,
        succeeded=sum(1 for o in outcomes if o.ok and o.shape.malformed is None),
        refused_as_expected=sum(1 for o in outcomes if o.ok and o.shape.malformed is not None),
        failures_by_cause=dict(causes.most_common()),
        failures_by_fault=dict(by_fault.most_common()),
        unexplained=unexplained,
        per_gateway={name: dict(c) for name, c in gateways.items()},
        drain_in_flight=len(in_flight),
        drain_failed=sum(1 for o in in_flight if not o.ok),
        leak=_leak(samples, duration),
        p99_pick_ms=_p99_by_phase(samples, events, duration),
        events=list(events),
    )


def render(report: SoakReport) -> str:
    """Markdown summary (what bench/RESULTS.md records)."""
    lines = [
        f"- duration {report.duration:.0f} s; requests sent {report.sent} (client skipped {report.skipped} ticks at its "
        f"in-flight cap); succeeded {report.succeeded}; malformed refused as expected {report.refused_as_expected}; "
        f"failed {sum(report.failures_by_cause.values())}; **unexplained {len(report.unexplained)}**",
        "- per gateway: " + "; ".join(f"{g}: {c.get('ok', 0)}/{c['sent']} ok" for g, c in sorted(report.per_gateway.items())),
        "- failures by cause: " + (", ".join(f"{k} {v}" for k, v in report.failures_by_cause.items()) or "none"),
        "- failures by fault: " + (", ".join(f"{k} {v}" for k, v in report.failures_by_fault.items()) or "none"),
        f"- SIGTERM drain: {report.drain_in_flight} requests in flight at SIGTERM, {report.drain_failed} failed",
    ]
    if report.leak is not None:
        lk = report.leak
        lines.append(f"- last epp process, {lk.samples} samples from {LEAK_WINDOW_START:.0%} of the run: RSS "
                     f"{lk.rss_start / 2**20:.1f} → {lk.rss_end / 2**20:.1f} MiB ({lk.rss_growth:+.1%}), open FDs "
                     f"{lk.fds_start:.0f} → {lk.fds_end:.0f}")
    lines += ["", "| phase | window (s) | p99 pick latency (ms) |", "|---|---|---|"]
    windows = {e.name: f"{e.started:.0f}–{(e.ended or e.started):.0f}" for e in report.events if e.started is not None}
    windows[WARM_UP] = "before the first fault"
    for name, p99 in report.p99_pick_ms.items():
        lines.append(f"| {name} | {windows.get(name, 'between faults')} | {'-' if p99 is None else f'{p99:.2f}'} |")
    for o in report.unexplained[:20]:
        lines.append(f"- unexplained: {o.request_id} via {o.gateway} at {o.start:.1f}–{o.end:.1f}s: {o.cause}")
    return "\n".join(lines)
