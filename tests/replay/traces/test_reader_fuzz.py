"""Whatever a trace file holds, ``read_trace`` returns a ``Trace`` (bad lines as issues) or raises ``TraceError``."""

from __future__ import annotations

import gzip
import json
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from epp.replay.traces import Trace, TraceError, read_trace

values = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=10), st.lists(st.integers(-5, 2**40), max_size=6), st.lists(st.text(max_size=4), max_size=3),
    st.dictionaries(st.text(max_size=4), st.integers(), max_size=2),
)
KEYS = ("timestamp", "input_length", "output_length", "hash_ids", "prompt", "messages", "prompt_token_ids",
        "max_tokens", "model", "arrival", "role", "content")


@st.composite
def json_lines(draw: st.DrawFn) -> str:
    """Objects with the keys the readers look for, holding values of any type."""
    keys = draw(st.lists(st.sampled_from(KEYS), max_size=5, unique=True))
    return json.dumps({k: draw(values) for k in keys})  # json, not orjson: ints past 64 bits, NaN, Infinity


csv_lines = st.lists(st.one_of(st.integers(-10, 10**12).map(str), st.text(max_size=8), st.just("")), max_size=4).map(",".join)
azure_header = st.just("TIMESTAMP,ContextTokens,GeneratedTokens")
lines = st.lists(st.one_of(json_lines(), csv_lines, azure_header, st.text(max_size=30)), max_size=12)


def write(data: bytes, gz: bool) -> Path:
    directory = Path(tempfile.mkdtemp(prefix="trace-fuzz-"))
    path = directory / ("t.jsonl.gz" if gz else "t.jsonl")
    path.write_bytes(gzip.compress(data) if gz else data)
    return path


def read(path: Path) -> None:
    try:
        trace = read_trace(path)
    except TraceError:
        return
    finally:
        path.unlink()
        path.parent.rmdir()
    assert isinstance(trace, Trace) and trace.requests
    arrivals = [r.arrival for r in trace.requests]
    assert arrivals == sorted(arrivals) and arrivals[0] == 0


SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@SETTINGS
@given(text=lines.map("\n".join), gz=st.booleans())
def test_any_lines_give_a_trace_or_trace_error(text: str, gz: bool) -> None:
    read(write(text.encode(), gz))


@SETTINGS
@given(data=st.binary(max_size=400), gz=st.booleans(), cut=st.integers(0, 400))
def test_any_bytes_even_truncated_gzip_give_a_trace_or_trace_error(data: bytes, gz: bool, cut: int) -> None:
    path = write(data, gz)
    path.write_bytes(path.read_bytes()[: max(cut, 1)] if gz else data)  # a gzip stream cut short
    read(path)
