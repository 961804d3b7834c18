"""Process logging for epp: human text or one JSON object per line, chosen by flag.

``--log-format json`` (or the reference's ``--zap-encoder json``) writes zap-shaped lines — ``ts``,
``level``, ``logger``, ``msg`` — plus every structured field a call passed with ``extra=fields(...)``
(``request_id``, ``status``, ``reason`` …) as its own key, so log pipelines can filter on them without
parsing messages. Text lines carry the same facts inside the message.

The reference's zap flags work as in controller-runtime: ``--zap-log-level`` (or llm-d's ``--log-level``)
``debug|info|warn|error|panic`` or a verbosity number (overrides ``-v``), ``--zap-devel`` (debug level unless one
is given, tracebacks from warn on), ``--zap-stacktrace-level`` (records below it are logged without their
traceback; default error, warn with ``--zap-devel``), ``--zap-time-encoding`` (the JSON ``ts`` as
``epoch``/``millis``/``nano`` numbers or ``iso8601``/``rfc3339``/``rfc3339nano`` text; default ISO 8601
with milliseconds).

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
from dataclasses import dataclass
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


# zap level name → Python level; a number is a verbosity as for -v.
ZAP_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warn": logging.WARNING, "error": logging.ERROR,
              "dpanic": logging.CRITICAL, "panic": logging.CRITICAL, "fatal": logging.CRITICAL}
TIME_ENCODINGS = ("epoch", "millis", "nano", "iso8601", "rfc3339", "rfc3339nano")


def zap_level(text: str) -> int:
    """A zap level name or a verbosity number (> 0) → the Python logging level."""
    value = text.strip().lower()
    if value in ZAP_LEVELS:
        return ZAP_LEVELS[value]
    if value.isdigit() and int(value) > 0:
        return level_for(int(value))
    raise argparse.ArgumentTypeError(f"expected {'|'.join(ZAP_LEVELS)} or a number > 0, got {text!r}")


def time_encoding(text: str) -> str:
    value = text.strip().lower()
    if value not in TIME_ENCODINGS:
        raise argparse.ArgumentTypeError(f"expected one of {', '.join(TIME_ENCODINGS)}, got {text!r}")
    return value


@dataclass(frozen=True, slots=True)
class LogSettings:
    """What the logging flags ask for, resolved (explicit flags beat ``--zap-devel``, which beats ``-v``)."""

    format: str = TEXT
    level: int = logging.INFO
    stacktrace_level: int = logging.ERROR
    time_encoding: str | None = None
    library_level: int | None = None  # grpc, aiohttp …; None: from the verbosity given beside the format


def log_settings(args: argparse.Namespace) -> LogSettings:
    devel = bool(getattr(args, "zap_devel", False))
    explicit = getattr(args, "zap_log_level", None)
    level = explicit if explicit is not None else logging.DEBUG if devel else level_for(args.verbosity)
    stack = getattr(args, "zap_stacktrace_level", None)
    if stack is None:
        stack = logging.WARNING if devel else logging.ERROR
    library = logging.NOTSET if args.verbosity >= LIBRARY_DEBUG_VERBOSITY else max(level, logging.INFO)
    return LogSettings(args.log_format, level, stack, getattr(args, "zap_time_encoding", None), library)


def add_logging_flags(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("logging")
    g.add_argument("--log-format", type=log_format, default=TEXT, metavar="text|json",
                   help="log line format: human text, or one JSON object per line")
    g.add_argument("--zap-encoder", dest="log_format", type=log_format, metavar="console|json", default=argparse.SUPPRESS,
                   help="the reference picker's name for --log-format (console = text)")
    g.add_argument("-v", "--v", dest="verbosity", type=int, default=2,
                   help=f"log verbosity: 1 warnings, 2 info, 3+ debug, {LIBRARY_DEBUG_VERBOSITY}+ also libraries' "
                        "debug lines (grpc, aiohttp, ...)")
    g.add_argument("--zap-log-level", "--log-level", dest="zap_log_level", type=zap_level, default=None,
                   metavar="LEVEL", help="debug|info|warn|error|panic or a verbosity number; overrides -v")
    g.add_argument("--zap-devel", type=_go_bool, nargs="?", const=True, default=False, metavar="BOOL",
                   help="development logging: debug level and tracebacks from warn on (unless set otherwise)")
    g.add_argument("--zap-stacktrace-level", type=zap_level, default=None, metavar="LEVEL",
                   help="records below this level are logged without their traceback (default error)")
    g.add_argument("--zap-time-encoding", type=time_encoding, default=None, metavar="ENCODING",
                   help=f"JSON ts field: {', '.join(TIME_ENCODINGS)} (default ISO 8601 with milliseconds)")


def _go_bool(text: str) -> bool:
    from epp._util.cli import go_bool  # cli imports this module

    return go_bool(text)


def _timestamp(created: float, encoding: str | None) -> str | float | int:
    """zap's time encoders; None is epp's default (ISO 8601, milliseconds, UTC)."""
    if encoding == "epoch":
        return created
    if encoding == "millis":
        return created * 1000.0
    if encoding == "nano":
        return int(created * 1e9)
    moment = datetime.datetime.fromtimestamp(created, datetime.UTC)
    if encoding == "rfc3339":
        return moment.isoformat(timespec="seconds")
    if encoding == "rfc3339nano":
        return moment.isoformat(timespec="microseconds")
    return moment.isoformat(timespec="milliseconds")


class _StacktraceFilter(logging.Filter):
    """Drops the traceback of records below ``--zap-stacktrace-level`` (the record still logs)."""

    def __init__(self, level: int) -> None:
        super().__init__()
        self.level = level

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < self.level and (record.exc_info or record.stack_info):
            record.exc_info, record.exc_text, record.stack_info = None, None, None
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per record, zap's key names; never raises on odd field values."""

    def __init__(self, time_encoding: str | None = None) -> None:
        super().__init__()
        self.time_encoding = time_encoding

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": _timestamp(record.created, self.time_encoding),
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


def configure_logging(fmt: str | LogSettings, verbosity: int = 2, stream: TextIO | None = None) -> logging.Handler:
    """Install one root handler (replacing any) in the chosen format; returns it. ``fmt`` is a format
    name (with ``verbosity``) or the resolved ``LogSettings`` of a command's flags."""
    settings = fmt if isinstance(fmt, LogSettings) else LogSettings(fmt, level_for(verbosity))
    handler = logging.StreamHandler(stream or sys.stderr)
    if settings.format == JSON:
        handler.setFormatter(JsonFormatter(settings.time_encoding))
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.addFilter(_StacktraceFilter(settings.stacktrace_level))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(settings.level)
    library_level = settings.library_level if settings.library_level is not None else (
        logging.NOTSET if verbosity >= LIBRARY_DEBUG_VERBOSITY else max(settings.level, logging.INFO))
    for name in LIBRARY_LOGGERS:
        logging.getLogger(name).setLevel(library_level)
    return handler
