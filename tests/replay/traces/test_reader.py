"""Trace readers: format detection, token mapping, malformed lines, coarse timestamps."""

from __future__ import annotations

import gzip
import itertools
import json
from pathlib import Path

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from epp.replay.bounds import chains
from epp.replay.traces import SegmentPrompt, TokenPrompt, TraceError, TraceRequest, read_trace
from epp.replay.traces.timing import spread_buckets


def write(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(line + "\n" for line in lines))
    return path


def mooncake(ts: int, length: int, ids: list[int], out: int = 4) -> str:
    return json.dumps({"timestamp": ts, "input_length": length, "output_length": out, "hash_ids": ids})


def test_mooncake_hash_ids_become_block_token_runs(tmp_path: Path) -> None:
    trace = read_trace(write(tmp_path / "t.jsonl", [mooncake(0, 1000, [0, 1]), mooncake(2000, 600, [0, 7])]))
    assert trace.format == "mooncake-jsonl" and trace.block_tokens == 512
    first, second = trace.requests
    assert first.prompt.tokens() == list(range(512)) + list(range(512, 512 + 488))
    assert second.prompt.tokens()[:512] == first.prompt.tokens()[:512]
    assert second.prompt.tokens()[512:] == list(range(7 * 512, 7 * 512 + 88))
    assert (first.arrival, second.arrival) == (0.0, 2.0)
    assert first.output_tokens == 4


def test_malformed_lines_are_reported_with_line_numbers_and_skipped(tmp_path: Path) -> None:
    lines = [
        mooncake(0, 10, [0]),
        "{not json",
        "",
        json.dumps({"timestamp": 5, "input_length": 1000, "output_length": 1, "hash_ids": [1]}),
        "[1, 2]",
        json.dumps({"timestamp": -1, "input_length": 10, "output_length": 1, "hash_ids": [2]}),
        mooncake(10, 10, [3]),
    ]
    trace = read_trace(write(tmp_path / "t.jsonl", lines))
    assert len(trace.requests) == 2
    assert [issue.line for issue in trace.issues] == [2, 4, 5, 6]
    assert "1 hash_ids for input_length 1000" in trace.issues[1].message
    assert str(trace.issues[0]).startswith("line 2: not valid JSON")


def test_gzip_and_max_requests(tmp_path: Path) -> None:
    path = tmp_path / "t.jsonl.gz"
    with gzip.open(path, "wt") as fh:
        for i in range(5):
            fh.write(mooncake(i * 1000, 16, [i]) + "\n")
    trace = read_trace(path, max_requests=3)
    assert trace.name == "t.jsonl"
    assert len(trace.requests) == 3


def test_epp_jsonl_prompt_messages_and_token_ids(tmp_path: Path) -> None:
    system = "You are a helpful assistant. " * 8
    lines = [
        json.dumps({"timestamp": 0.5, "prompt": system + "What is 2+2?", "output_length": 8, "model": "m"}),
        json.dumps({"timestamp": 1.0, "prompt": system + "Name a colour.", "output_length": 8, "session": "s1"}),
        json.dumps({"timestamp": 1.5, "messages": [{"role": "user", "content": "hi"}], "output_length": 2}),
        json.dumps({"timestamp": 2.0, "prompt_token_ids": [5, 6, 7], "output_length": 1, "priority": 2}),
        json.dumps({"timestamp": 2.5, "prompt": "x", "messages": [], "output_length": 1}),
        json.dumps({"timestamp": 3.0, "prompt": "x", "output_length": 0}),
    ]
    trace = read_trace(write(tmp_path / "t.jsonl", lines))
    assert trace.format == "epp-jsonl" and trace.block_tokens is None
    a, b, chat, ids = trace.requests
    shared = len(system.encode()) // 4
    assert a.prompt.tokens()[:shared] == b.prompt.tokens()[:shared]
    assert a.prompt.tokens()[shared] != b.prompt.tokens()[shared]
    assert (a.model, b.session, ids.priority) == ("m", "s1", 2)
    assert ids.prompt.tokens() == [5, 6, 7]
    assert chat.prompt.length == -(-len("<|user|>\nhi\n<|assistant|>\n") // 4)
    assert [i.line for i in trace.issues] == [5, 6]
    assert "exactly one of" in trace.issues[0].message


def test_azure_csv_gives_unique_prompts(tmp_path: Path) -> None:
    lines = [
        "TIMESTAMP,ContextTokens,GeneratedTokens",
        "2023-11-16 18:17:03.9799600,40,10",
        "2023-11-16 18:17:04.0319600,40,0",
        "2023-11-16 18:17:04.5,oops,3",
    ]
    trace = read_trace(write(tmp_path / "a.csv", lines))
    assert trace.format == "azure-csv"
    first, second = trace.requests
    assert second.arrival == pytest.approx(0.052)
    assert second.output_tokens == 1  # an engine always produces one token
    assert not set(first.prompt.tokens()) & set(second.prompt.tokens())
    assert [i.line for i in trace.issues] == [4]


def test_unusable_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(TraceError, match="no usable requests; first problem: line 1"):
        read_trace(write(tmp_path / "t.jsonl", ['{"foo": 1}']))
    with pytest.raises(TraceError, match="cannot read"):
        read_trace(tmp_path / "missing.jsonl")


def test_coarse_buckets_are_spread_evenly() -> None:
    # resolution 3 s; four requests share t=0, two share t=6 (the last bucket)
    assert spread_buckets([0, 0, 0, 0, 3, 6, 6]) == [0, 0.75, 1.5, 2.25, 3, 6, 7.5]
    assert spread_buckets([1.0, 1.0]) == [1.0, 1.0]  # a single instant has no resolution


@settings(max_examples=60, deadline=None)
@example([[(0, 8), (1, 8), (2, 3)], [(0, 19)]])  # equal content, split differently
@given(st.lists(st.lists(st.tuples(st.integers(0, 6), st.integers(1, 40)), min_size=1, max_size=5), min_size=2, max_size=4))
def test_segment_block_keys_equal_exactly_when_tokens_equal(prompts: list[list[tuple[int, int]]]) -> None:
    """Chained block keys must give the same prefix structure as the materialised tokens."""
    built = [SegmentPrompt(tuple((start * 8, n) for start, n in segs)) for segs in prompts]
    by_keys = chains([TraceRequest(0.0, p, 1) for p in built], 16)
    by_tokens = chains([TraceRequest(0.0, TokenPrompt(tuple(p.tokens())), 1) for p in built], 16)
    assert [c.tokens for c in by_keys] == [c.tokens for c in by_tokens]
    pairs = [(a, b) for a, b in zip(by_keys, by_tokens)]
    for (ka, ta), (kb, tb) in itertools.product(pairs, repeat=2):
        assert [x == y for x, y in zip(ka.nodes, kb.nodes)] == [x == y for x, y in zip(ta.nodes, tb.nodes)]


def test_segment_blocks_cover_the_prompt_with_a_partial_tail() -> None:
    prompt = SegmentPrompt(((0, 20), (100, 5), (200, 40)))
    blocks = list(prompt.blocks(16))
    assert [n for _, n in blocks] == [16, 16, 16, 16, 1]
    assert blocks[0][0] == 0 and blocks[1][0] == ((16, 4), (100, 5), (200, 7))
