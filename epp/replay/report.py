"""Human and machine output: the runs' tables and ``summary.json``.

The tables must read in an 80-column terminal without cutting a number: values that are the same in
every row (the trace's ideal and capacity-bound hit ratios, the request count) go into the heading,
columns that say nothing (one replica, no KV events) are left out, and what remains is packed into as
many stacked tables as the width needs, each repeating the run's name. Latencies carry their unit.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Group
from rich.table import Table
from rich.text import Text

# Each column costs its content plus two spaces of padding and one border character; one more closes the row.
CELL_OVERHEAD = 3
MIN_POLICY_WIDTH = 12


def _ms(seconds: float) -> str:
    """Milliseconds with three significant digits where they matter, thousands separated beyond."""
    ms = seconds * 1000
    return f"{ms:.2f}" if ms < 10 else f"{ms:.1f}" if ms < 100 else f"{ms:,.0f}"


@dataclass(frozen=True, slots=True)
class Column:
    header: str
    key: str
    render: Callable[[Any], str]
    unit: str = ""

    def cell(self, summary: dict[str, Any]) -> str:
        value = summary[self.key]
        return "–" if value is None else self.render(value)

    @property
    def title(self) -> str:
        return self.header + (f"\n{self.unit}" if self.unit else "")

    def width(self, summaries: Sequence[dict[str, Any]]) -> int:
        return max([len(self.header), len(self.unit), *(len(self.cell(s)) for s in summaries)])


POLICY = Column("policy", "policy", str)
RUN_COLUMNS: tuple[Column, ...] = (
    Column("rate×", "rate_scale", "{:g}".format),
    Column("replicas", "replicas", str),
    Column("view", "prefix_view", str),
)
VALUE_COLUMNS: tuple[Column, ...] = (
    Column("done", "completed", "{:,}".format),
    Column("shed", "shed", "{:,}".format),
    Column("hit", "hit_ratio", "{:.1%}".format, "tokens"),
    Column("TTFT p50", "ttft_p50", _ms, "ms"),
    Column("TTFT p90", "ttft_p90", _ms, "ms"),
    Column("TTFT p99", "ttft_p99", _ms, "ms"),
    Column("TPOT p50", "tpot_p50", _ms, "ms"),
    Column("TPOT p90", "tpot_p90", _ms, "ms"),
    Column("P/D", "disaggregated", "{:,}".format, "requests"),
    Column("E2E p90", "e2e_p90", "{:,.2f}".format, "s"),
    Column("tok/s", "throughput_tok_s", "{:,.0f}".format, "output"),
    Column("imbalance", "imbalance", "{:.2f}".format, "max/mean"),
    Column("busy imb.", "busy_imbalance", "{:.2f}".format, "max/mean"),
    Column("KV batches", "kv_event_batches", "{:,}".format),
)  # wall_s (the replay's own run time) is in summary.json and the progress lines, not a policy's result
# Shown only when some run differs from this value (None, not measured, counts as it): otherwise the column
# repeats what the heading says.
_QUIET_DEFAULTS = {"replicas": 1, "prefix_view": "own", "kv_event_batches": 0, "shed": 0, "disaggregated": 0,
                   "busy_imbalance": None}  # None: live replay does not see the engines' busy time
# Shown with another column: the decode-side TPOT tail is what disaggregation moves, so it joins the P/D count.
_SHOWN_WITH = {"tpot_p90": "disaggregated"}
# The same for every run of one trace on one cluster: stated once, in the heading.
_TRACE_KEYS = (("ideal_hit_ratio", "ideal hit {:.1%}"),
               ("capacity_hit_ratio", "capacity-bound hit {:.1%}"))


def _shown(columns: Sequence[Column], summaries: Sequence[dict[str, Any]]) -> list[Column]:
    def quiet(key: str) -> bool:
        return key in _QUIET_DEFAULTS and all(s.get(key) in (None, _QUIET_DEFAULTS[key]) for s in summaries)

    return [c for c in columns if not quiet(_SHOWN_WITH.get(c.key, c.key))]


def _common(summaries: Sequence[dict[str, Any]]) -> list[str]:
    """Heading facts: trace-level values every run shares (a differing one stays out and is not lost:
    summary.json has every value per run)."""
    facts = []
    for key, fmt in _TRACE_KEYS:
        values = {s[key] for s in summaries}
        if len(values) == 1 and None not in values:
            facts.append(fmt.format(values.pop()))
    return facts


def pack(widths: Sequence[int], fixed: int, budget: int) -> list[list[int]]:
    """Indices of value columns per stacked table, in order: as few tables as fit beside the ``fixed``
    columns within ``budget`` characters, with the columns spread evenly over them (no lonely last one)."""
    count = len(_greedy(widths, fixed, budget))
    even = fixed + -(-sum(w + CELL_OVERHEAD for w in widths) // count)
    while len(tables := _greedy(widths, fixed, even)) > count:
        even += 1
    return tables


def _greedy(widths: Sequence[int], fixed: int, budget: int) -> list[list[int]]:
    """As many columns per table as fit (at least one, so nothing is ever dropped)."""
    tables: list[list[int]] = [[]]
    used = fixed
    for index, width in enumerate(widths):
        cost = width + CELL_OVERHEAD
        if tables[-1] and used + cost > budget:
            tables.append([])
            used = fixed
        tables[-1].append(index)
        used += cost
    return tables


def tables(title: str, summaries: Sequence[dict[str, Any]], width: int) -> Group:
    """One row per run in each of as few stacked tables as fit in ``width`` columns; latencies in
    milliseconds (E2E in seconds), hit ratios as cached ÷ prompt tokens."""
    keys = [POLICY, *_shown(RUN_COLUMNS, summaries)]
    values = _shown(VALUE_COLUMNS, summaries)
    widths = [c.width(summaries) for c in values]
    key_widths = [c.width(summaries) for c in keys]
    # The policy name (possibly a config path) is the one column that may wrap: at most a quarter of the line.
    key_widths[0] = max(MIN_POLICY_WIDTH, min(key_widths[0], width // 4))
    fixed = 1 + sum(w + CELL_OVERHEAD for w in key_widths)
    heading = Text(title + ("" if not _common(summaries) else "\n" + ", ".join(_common(summaries))), style="bold")
    parts: list[Any] = [heading]
    for group in pack(widths, fixed, width):
        out = Table(title_justify="left")
        for column, column_width in zip(keys, key_widths):
            left = column is POLICY
            out.add_column(column.title, justify="left" if left else "right", overflow="fold",
                           max_width=column_width if left else None, no_wrap=not left)
        for index in group:
            out.add_column(values[index].title, justify="right", no_wrap=True)
        for summary in summaries:
            out.add_row(*(c.cell(summary) for c in keys), *(values[i].cell(summary) for i in group))
        parts.append(out)
    return Group(*parts)


def dumps(summaries: Sequence[dict[str, Any]]) -> str:
    """The ``summary.json`` document: a JSON array with one object per (policy, rate) run."""
    return json.dumps(list(summaries), indent=2)


def write_summary(out_dir: Path, summaries: Sequence[dict[str, Any]]) -> Path:
    path = out_dir / "summary.json"
    path.write_text(dumps(summaries) + "\n")
    return path
