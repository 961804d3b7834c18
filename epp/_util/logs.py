"""Process logging for epp: human text or one JSON object per line, chosen by flag.

``--log-format json`` (or the reference's ``--zap-encoder json``) writes zap-shaped lines — ``ts``,
``level``, ``logger``, ``msg`` — plus every structured field a call passed with ``extra=fields(...)``
(``request_id``, ``status``, ``reason`` …) as its own key, so log pipelines can filter on them without
parsing messages. Text lines carry the same facts inside the message.

Client-supplied values (model names, paths, request ids) go through ``clip``: bounded length and no
control characters, so a hostile request can neither forge log lines nor blow up log volume. Request
bodies and header values other than the request id are never logged anywhere in epp.
"""

from __future__ import annotations

import argparse
import datetime
import logging
import sys
from collections.abc import Mapping
from typing import Any, TextIO

import orjson

TEXT, JSON = "text", "json"
MAX_FIELD_CHARS = 128
# Attributes every LogRecord has; anything else on a record came from ``extra=`` and is a field.
_RECORD_ATTRS = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime", "taskName"}
_LEVELS = {"WARNING": "warn", "CRITICAL": "fatal"}
_CONTROL = {c: "?" for c in range(32)} | {127: "?"}


def clip(value: object, limit: int = MAX_FIELD_CHARS) -> str:
    """A client-supplied value made safe to log: control characters replaced, at most ``limit`` chars."""
    text = str(value).translate(_CONTROL)
    return text if len(text) <= limit else text[:limit] + f"...(+{len(text) - limit})"


def fields(**values: object) -> dict[str, dict[str, object]]:
    """``extra=`` argument carrying structured fields: ``log.info("msg", extra=fields(request_id=...))``."""
    return {"fields": values}


def log_format(text: str) -> str:
    """``text``/``console`` (zap's name for it) or ``json``."""
    value = text.strip().lower()
    if value in (TEXT, "console"):
        return TEXT
    if value == JSON:
        return JSON
    raise argparse.ArgumentTypeError(f"expected text, console or json, got {text!r}")


def add_logging_flags(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("logging")
    g.add_argument("--log-format", type=log_format, default=TEXT, metavar="text|json",
                   help="log line format: human text, or one JSON object per line")
    g.add_argument("--zap-encoder", dest="log_format", type=log_format, metavar="console|json", default=argparse.SUPPRESS,
                   help="the reference picker's name for --log-format (console = text)")
    g.add_argument("-v", "--v", dest="verbosity", type=int, default=2,
                   help=f"log verbosity: 1 warnings, 2 info, 3+ debug, {LIBRARY_DEBUG_VERBOSITY}+ also libraries' "
                        "debug lines (grpc, aiohttp, ...)")


class JsonFormatter(logging.Formatter):
    """One JSON object per record, zap's key names; never raises on odd field values."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": datetime.datetime.fromtimestamp(record.created, datetime.timezone.utc).isoformat(timespec="milliseconds"),
            "level": _LEVELS.get(record.levelname, record.levelname.lower()),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        extra = getattr(record, "fields", None)
        if isinstance(extra, Mapping):
            for key, value in extra.items():
                entry.setdefault(str(key), value)
        for key, value in vars(record).items():
            if key not in _RECORD_ATTRS and key != "fields":
                entry.setdefault(key, value)
        if record.exc_info:
            entry["error"] = repr(record.exc_info[1])
            entry["stacktrace"] = self.formatException(record.exc_info)
        try:
            return orjson.dumps(entry, default=str).decode()
        except orjson.JSONEncodeError:  # e.g. an int beyond 64 bits: only the offending values become text
            return orjson.dumps({key: _encodable(value) for key, value in entry.items()}, default=str).decode()


def _encodable(value: object) -> object:
    try:
        orjson.dumps(value, default=str)
    except orjson.JSONEncodeError:
        return str(value)
    return value


# Libraries whose DEBUG output is about their own internals (grpc logs a line per RPC and event loop, in
# Cython); they log at most INFO unless the operator asks for library debugging with -v 5 or more.
LIBRARY_LOGGERS = ("grpc", "asyncio", "aiohttp", "kubernetes_asyncio", "urllib3", "hpack", "matplotlib", "PIL")
LIBRARY_DEBUG_VERBOSITY = 5


def level_for(verbosity: int) -> int:
    return logging.WARNING if verbosity < 2 else logging.INFO if verbosity == 2 else logging.DEBUG


def configure_logging(fmt: str, verbosity: int, stream: TextIO | None = None) -> logging.Handler:
    """Install one root handler (replacing any) in the chosen format; returns it."""
    handler = logging.StreamHandler(stream or sys.stderr)
    if fmt == JSON:
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level_for(verbosity))
    library_level = logging.NOTSET if verbosity >= LIBRARY_DEBUG_VERBOSITY else max(level_for(verbosity), logging.INFO)
    for name in LIBRARY_LOGGERS:
        logging.getLogger(name).setLevel(library_level)
    return handler
