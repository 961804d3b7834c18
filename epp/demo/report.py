"""Turn the demo's outcomes and Envoy's access log into a table: who served each request, and why.

epp does not report its reasons per request, so the "why" column shows what the picker could see: how
many of the demo's own requests each engine was serving when the request was sent (the demo is the only
traffic), and for the requests that share a system prompt whether they met on the engine that already
cached it (the "cached tokens" column is what that engine reported in ``usage``). With the least-inflight
preset (fewest in flight, random among equals) the in-flight counts alone explain each choice, so the
column says which rule applied.
"""

from __future__ import annotations

from collections import Counter

from rich.console import Console
from rich.table import Table

from epp.demo.engines import EngineFleet
from epp.demo.traffic import Outcome
from epp.envoy.accesslog import AccessLogEntry


def _busy(at: float, outcomes: list[Outcome], served: dict[str, str], names: list[str], me: Outcome) -> Counter[str]:
    """Requests each engine was serving at time ``at``, apart from ``me``."""
    busy: Counter[str] = Counter({name: 0 for name in names})
    for other in outcomes:
        engine = served.get(other.request.request_id)
        if other is not me and engine and other.sent_at < at < other.done_at:
            busy[engine] += 1
    return busy


def _short(name: str) -> str:
    return name.rsplit("-", 1)[-1]


LEAST_INFLIGHT = "least-inflight"


def _least_busy_rule(busy: Counter[str], engine: str, names: list[str]) -> str:
    least = min(busy.values())
    if busy[engine] > least:
        return " → not least busy in this view (epp counted differently)"
    if sum(1 for n in names if busy[n] == least) > 1:
        return " → tie, random among least busy"
    return " → least busy"


def why(outcome: Outcome, outcomes: list[Outcome], served: dict[str, str], names: list[str], policy: str) -> str:
    engine = served.get(outcome.request.request_id)
    if engine is None:
        return "not routed (see status)"
    busy = _busy(outcome.sent_at, outcomes, served, names, outcome)
    reason = " ".join(f"{_short(n)}={busy[n]}" for n in names)
    if policy == LEAST_INFLIGHT:
        reason += _least_busy_rule(busy, engine, names)
    group = outcome.request.prefix_group
    if group is not None:
        earlier = [o for o in outcomes if o.request.prefix_group == group and o.sent_at < outcome.sent_at]
        if not earlier:
            reason += "; first with this system prompt"
        elif served.get(earlier[0].request.request_id) == engine:
            reason += "; same engine as the first with this system prompt: its prefix is cached there"
        else:
            reason += "; another engine than the first with this system prompt: prefix not reused"
    return reason


def render(
    outcomes: list[Outcome], entries: dict[str, AccessLogEntry], fleet: EngineFleet, console: Console, policy: str
) -> None:
    names = list(fleet.members)
    served = {
        rid: name for rid, e in entries.items() if e.upstream and (name := fleet.name_of(e.upstream)) is not None
    }
    table = Table(title="Where each request went (served by = Envoy's upstream; ✓ = the endpoint epp picked)")
    for column in ("#", "request", "status", "served by", "ms", "cached tokens", "in flight per engine when sent → why"):
        table.add_column(column, overflow="fold")
    for index, outcome in enumerate(sorted(outcomes, key=lambda o: o.sent_at), start=1):
        entry = entries.get(outcome.request.request_id)
        picked = fleet.name_of(entry.destination) if entry and entry.destination else None
        engine = served.get(outcome.request.request_id)
        mark = "" if engine is None else " ✓" if picked == engine else f" ✗ (epp picked {picked or '-'})"
        timing = f"{outcome.latency_ms:.0f}"
        if outcome.first_event_at is not None:
            timing += f" (1st event {1000 * (outcome.first_event_at - outcome.sent_at):.0f})"
        table.add_row(
            str(index), outcome.request.label, outcome.error or str(outcome.status),
            f"{engine or '-'}{mark}", timing, "-" if outcome.cached_tokens is None else str(outcome.cached_tokens),
            why(outcome, outcomes, served, names, policy),
        )  # fmt: skip
    console.print(table)
    counts = Counter(served.values())
    console.print("Requests per engine: " + ", ".join(f"{n}={counts[n]}" for n in names))
    cached = sum(o.cached_tokens or 0 for o in outcomes)
    console.print(
        f"Policy: {policy}. The in-flight counts above are the demo's own view at send time, so they approximate "
        f"what epp saw; cached tokens ({cached:,} in all) are what the engines reported reusing from their prefix "
        "cache. Try `epp demo --policy least-inflight` or `--policy random` to compare."
    )
