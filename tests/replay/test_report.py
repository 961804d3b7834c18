"""The replay tables as a terminal shows them: within 80 and 120 columns, every number whole, units named."""

from __future__ import annotations

import io
from typing import Any

import pytest
from rich.console import Console

from epp.replay.report import pack, tables
from epp.replay.summary import SUMMARY_KEYS


def summary(policy: str, **values: Any) -> dict[str, Any]:
    base: dict[str, Any] = dict.fromkeys(SUMMARY_KEYS, None) | {
        "policy": policy, "rate_scale": 1.5, "replicas": 1, "prefix_view": "own", "requests": 123_456,
        "completed": 123_456, "shed": 0, "shed_too_long": 0, "hit_ratio": 0.6512, "ideal_hit_ratio": 0.651,
        "capacity_hit_ratio": 0.432, "ttft_p50": 0.0123456, "ttft_p90": 0.123456, "ttft_p99": 1.2345678,
        "tpot_p50": 0.00842, "e2e_p90": 1234.5, "throughput_tok_s": 1_234_567.0, "imbalance": 1.28,
        "kv_event_batches": 0, "wall_s": 3.2,
    }
    return base | values


def render(summaries: list[dict[str, Any]], width: int) -> list[str]:
    out = io.StringIO()
    console = Console(file=out, width=width, force_terminal=False, color_system=None)
    console.print(tables("mooncake: 123,456 requests over 1,800 s, 8 × llama-3.1-8b-h100", summaries, width))
    return out.getvalue().splitlines()


RUNS = [
    summary("gie-default"),
    summary("sglang-cache-aware", replicas=2, prefix_view="shared", kv_event_batches=98_765, shed=12_345),
    summary("/home/someone/configs/my-own-endpoint-picker-config.yaml", ttft_p99=None),
]


@pytest.mark.parametrize("width", [80, 100, 120])
def test_tables_fit_the_terminal_and_never_cut_a_number(width: int) -> None:
    lines = render(RUNS, width)
    assert max(len(line) for line in lines) <= width, "\n".join(lines)
    text = "\n".join(lines)
    assert "…" not in text
    for number in ("123,456", "12.3", "123", "1,235", "8.42", "1,234.50", "1,234,567", "1.28", "98,765", "12,345",
                   "65.1%"):
        assert number in text, (number, text)
    assert "ideal hit 65.1%, capacity-bound hit 43.2%" in text  # the same for every run: once, in the heading
    assert text.count("ms") >= 4 and "TTFT p50" in text and "TPOT p50" in text  # latencies carry their unit


def test_wide_terminals_get_one_table_and_quiet_columns_are_left_out() -> None:
    realistic = {"requests": 5_719, "completed": 5_719, "throughput_tok_s": 3_350.0, "e2e_p90": 2.45}
    lines = render([summary("gie-default", **realistic), summary("round-robin", **realistic)], 120)
    assert sum(line.startswith("┏") for line in lines) == 1
    text = "\n".join(lines)
    assert "replicas" not in text and "KV batches" not in text and "shed" not in text


def test_pack_puts_at_least_one_column_in_each_table() -> None:
    assert pack([10, 10, 10], fixed=20, budget=40) == [[0], [1], [2]]
    assert pack([5, 5, 200], fixed=10, budget=40) == [[0, 1], [2]]
    assert pack([7] * 5, fixed=10, budget=50) == [[0, 1, 2], [3, 4]]  # 4 + 1 would fit; 3 + 2 reads better
