"""Read back Envoy's JSON access log: where each request went and why it ended the way it did.

Envoy writes one JSON object per request (fields from ``config.ACCESS_LOG_FIELDS``); it buffers the file
and flushes on an interval (``EnvoyProcess`` asks for 100 ms), so readers poll with ``wait_for``.
"""

from __future__ import annotations

import time
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
    return [AccessLogEntry.from_json(line) for line in data.splitlines() if line.strip()]


def wait_for(path: Path, count: int, timeout: float = 5.0) -> list[AccessLogEntry]:
    """Poll until at least ``count`` entries are logged, or ``timeout`` passes; returns what is there."""
    deadline = time.monotonic() + timeout
    entries = read_entries(path)
    while len(entries) < count and time.monotonic() < deadline:
        time.sleep(0.05)
        entries = read_entries(path)
    return entries


def by_request_id(entries: list[AccessLogEntry]) -> dict[str, AccessLogEntry]:
    return {e.request_id: e for e in entries if e.request_id is not None}
