"""Read back Envoy's JSON access log: where each request went and why it ended the way it did.

Envoy writes one JSON object per request (fields from ``config.ACCESS_LOG_FIELDS``); it buffers the file
and flushes on an interval (``EnvoyProcess`` asks for 100 ms), so readers poll with ``wait_for``.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import orjson


@dataclass(frozen=True, slots=True)
class AccessLogEntry:
    """One finished request as Envoy saw it; ``None`` where Envoy logged ``-`` (no value)."""

    request_id: str | None
    method: str | None
    path: str | None
    code: int
    flags: str | None
    details: str | None
    upstream: str | None
    destination: str | None
    metadata: str | None
    attempts: int | None
    duration_ms: int | None

    @classmethod
    def from_json(cls, line: bytes) -> AccessLogEntry:
        raw = orjson.loads(line)

        def text(key: str) -> str | None:
            value = raw.get(key)
            return None if value in (None, "-", "") else str(value)

        def number(key: str) -> int | None:
            value = text(key)
            return int(value) if value is not None and value.isdigit() else None

        return cls(
            request_id=text("request_id"),
            method=text("method"),
            path=text("path"),
            code=number("code") or 0,
            flags=text("flags"),
            details=text("details"),
            upstream=text("upstream"),
            destination=text("destination"),
            metadata=text("metadata"),
            attempts=number("attempts"),
            duration_ms=number("duration_ms"),
        )


def read_entries(path: Path) -> list[AccessLogEntry]:
    """All complete lines logged so far (a missing file means nothing was logged yet)."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return []
    complete = data.split(b"\n")[:-1]  # a line still being flushed has no newline yet
    return [AccessLogEntry.from_json(line) for line in complete if line.strip()]


def wait_for(path: Path, request_ids: Iterable[str], timeout: float = 5.0) -> dict[str, AccessLogEntry]:
    """Entries of these requests by id, polling until all are logged or ``timeout`` passes (then: those found)."""
    wanted = set(request_ids)
    deadline = time.monotonic() + timeout
    while True:
        found = {e.request_id: e for e in read_entries(path) if e.request_id is not None and e.request_id in wanted}
        if len(found) == len(wanted) or time.monotonic() >= deadline:
            return found
        time.sleep(0.05)
