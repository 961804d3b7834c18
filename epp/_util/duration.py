"""Go-style durations (``50ms``, ``2s``, ``1m30s``), so flags read the same as the reference picker's."""

from __future__ import annotations

import re

_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")


def parse_duration(text: str) -> float:
    """Seconds in a Go ``time.ParseDuration`` string; a bare ``0`` is allowed, negative values are not.

    Raises ``ValueError`` naming the bad input, which argparse turns into a usage error.
    """
    s = text.strip()
    if s == "0":
        return 0.0
    pos, total = 0, 0.0
    while pos < len(s):
        match = _PART.match(s, pos)
        if match is None:
            raise ValueError(f"invalid duration {text!r}: expected e.g. 50ms, 2s, 1m30s")
        total += float(match.group(1)) * _UNITS[match.group(2)]
        pos = match.end()
    if pos == 0:
        raise ValueError(f"invalid duration {text!r}: expected e.g. 50ms, 2s, 1m30s")
    return total
