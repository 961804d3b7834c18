"""Open a trace file, detect its format, parse it line by line.

Formats (``.gz`` accepted for all): Mooncake JSONL (``hash_ids``), epp JSONL (``prompt`` /
``messages`` / ``prompt_token_ids``), Azure CSV (``TIMESTAMP,ContextTokens,GeneratedTokens`` header).
A malformed line is recorded as a ``TraceIssue`` with its line number and skipped, never fatal.
Requests come back sorted by arrival (stable), shifted so the first arrives at 0, coarse timestamp
buckets spread out.
"""

from __future__ import annotations

import dataclasses
import gzip
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson

from epp.replay.traces import azure, eppjsonl, mooncake
from epp.replay.traces.model import Trace, TraceIssue, TraceRequest
from epp.replay.traces.timing import spread_buckets
from epp.replay.traces.tokens import TokenSpace


class TraceError(Exception):
    """The file cannot be read as any trace format (missing, unreadable, unknown)."""


def _lines(path: Path) -> Iterator[tuple[int, str]]:
    opener = gzip.open if path.name.endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8", errors="replace") as text:
        yield from enumerate(text, start=1)


def _json_object(line: str) -> dict[str, Any]:
    try:
        obj = orjson.loads(line)
    except orjson.JSONDecodeError as exc:
        raise ValueError(f"not valid JSON ({exc})") from None
    if not isinstance(obj, dict):
        raise ValueError("not a JSON object")
    return obj


def _parse_all(path: Path, max_requests: int | None) -> tuple[str, list[TraceRequest], list[TraceIssue]]:
    fmt = ""
    space = TokenSpace()
    requests: list[TraceRequest] = []
    issues: list[TraceIssue] = []
    for number, line in _lines(path):
        if max_requests and len(requests) >= max_requests:
            break
        if not line.strip():
            continue
        try:
            if not fmt and azure.looks_like(line):
                fmt = "azure-csv"
                continue
            if fmt == "azure-csv":
                requests.append(azure.parse(line, space))
                continue
            obj = _json_object(line)
            if not fmt:
                fmt = "mooncake-jsonl" if mooncake.looks_like(obj) else "epp-jsonl" if eppjsonl.looks_like(obj) else ""
                if not fmt:
                    raise ValueError("neither a Mooncake line (hash_ids) nor an epp line (prompt/messages/prompt_token_ids)")
            requests.append(mooncake.parse(obj) if fmt == "mooncake-jsonl" else eppjsonl.parse(obj))
        except ValueError as exc:
            issues.append(TraceIssue(number, str(exc)))
    return fmt, requests, issues


def read_trace(path: str | Path, max_requests: int | None = None) -> Trace:
    """The trace in ``path``, at most ``max_requests`` requests; TraceError if there is no usable request."""
    path = Path(path)
    try:
        fmt, requests, issues = _parse_all(path, max_requests)
    except (OSError, EOFError, gzip.BadGzipFile) as exc:
        raise TraceError(f"cannot read {path}: {exc}") from exc
    if not requests:
        detail = f"; first problem: {issues[0]}" if issues else ""
        raise TraceError(f"{path}: no usable requests{detail}")
    requests.sort(key=lambda r: r.arrival)
    start = requests[0].arrival
    arrivals = spread_buckets([r.arrival - start for r in requests])
    requests = [dataclasses.replace(r, arrival=t) for r, t in zip(requests, arrivals)]
    name = path.name.removesuffix(".gz")
    block_tokens = mooncake.BLOCK_TOKENS if fmt == "mooncake-jsonl" else None
    return Trace(name, fmt, requests, issues, block_tokens)
