"""Log formats and the safety of client-supplied values in logs."""

from __future__ import annotations

import argparse
import io
import logging

import orjson
import pytest

from epp._util.logs import JSON, TEXT, add_logging_flags, clip, configure_logging, fields, log_settings


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_logging_flags(parser)
    return parser.parse_args(argv)


@pytest.mark.parametrize(
    ("argv", "fmt"),
    [([], TEXT), (["--log-format", "json"], JSON), (["--zap-encoder", "json"], JSON),
     (["--zap-encoder", "console"], TEXT), (["--log-format", "JSON"], JSON)],
)
def test_both_flag_spellings(argv: list[str], fmt: str) -> None:
    assert parse(argv).log_format == fmt


def test_bad_format_is_a_usage_error() -> None:
    with pytest.raises(SystemExit):
        parse(["--log-format", "xml"])


@pytest.fixture
def restore_root() -> object:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield root
    for h in list(root.handlers):
        root.removeHandler(h)
    for h in handlers:
        root.addHandler(h)
    root.setLevel(level)


def test_json_lines_carry_zap_keys_and_fields(restore_root: logging.Logger) -> None:
    out = io.StringIO()
    configure_logging(JSON, 3, out)
    log = logging.getLogger("epp.test")
    log.debug("routed %s", "r1", extra=fields(request_id="r1", status=200, big=2**70, obj=object()))
    log.warning("careful")
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        log.exception("failed")
    lines = [orjson.loads(line) for line in out.getvalue().splitlines()]
    assert [(e["level"], e["logger"], e["msg"]) for e in lines] == [
        ("debug", "epp.test", "routed r1"), ("warn", "epp.test", "careful"), ("error", "epp.test", "failed")]
    assert lines[0]["request_id"] == "r1" and lines[0]["status"] == 200 and lines[0]["big"] == str(2**70)
    assert lines[0]["ts"].endswith("+00:00")
    assert lines[2]["error"] == "RuntimeError('boom')" and "Traceback" in lines[2]["stacktrace"]


def test_text_format_and_verbosity(restore_root: logging.Logger) -> None:
    out = io.StringIO()
    configure_logging(TEXT, 1, out)
    logging.getLogger("epp.test").info("hidden")
    logging.getLogger("epp.test").warning("shown")
    assert "hidden" not in out.getvalue() and "WARNING epp.test: shown" in out.getvalue()
    assert len(restore_root.handlers) == 1


def test_clip_bounds_length_and_removes_control_characters() -> None:
    assert clip("a\nb\r\x1bc\x7f") == "a?b??c?"
    long = clip("x" * 1000)
    assert long.startswith("x" * 128) and long.endswith("...(+872)") and len(long) < 140


# -- the reference's zap flags ------------------------------------------------------------------------

@pytest.mark.parametrize(("argv", "level"), [
    ([], logging.INFO), (["-v", "4"], logging.DEBUG), (["--zap-log-level", "error"], logging.ERROR),
    (["--zap-log-level=debug", "-v", "1"], logging.DEBUG), (["--log-level", "warn"], logging.WARNING),
    (["--zap-log-level", "5"], logging.DEBUG), (["--zap-log-level", "2"], logging.INFO),
    (["--zap-devel"], logging.DEBUG), (["--zap-devel", "--zap-log-level", "info"], logging.INFO),
    (["--zap-devel=false"], logging.INFO),
])
def test_zap_log_level_devel_and_v(argv: list[str], level: int) -> None:
    assert log_settings(parse(argv)).level == level


@pytest.mark.parametrize("argv", [["--zap-log-level", "loud"], ["--zap-log-level", "0"], ["--zap-time-encoding", "unix"],
                                  ["--zap-stacktrace-level", "sometimes"], ["--zap-devel=yes"]])
def test_bad_zap_values_are_usage_errors(argv: list[str]) -> None:
    with pytest.raises(SystemExit):
        parse(argv)


@pytest.mark.parametrize(("encoding", "check"), [
    ("epoch", lambda ts: isinstance(ts, float) and ts > 1.7e9),
    ("millis", lambda ts: isinstance(ts, float) and ts > 1.7e12),
    ("nano", lambda ts: isinstance(ts, int) and ts > 1.7e18),
    ("iso8601", lambda ts: ts.endswith("+00:00") and "." in ts),
    ("rfc3339", lambda ts: ts.endswith("+00:00") and "." not in ts),
    ("rfc3339nano", lambda ts: ts.endswith("+00:00") and len(ts.split(".")[1]) == 12),
])
def test_zap_time_encoding(encoding: str, check: object, restore_root: logging.Logger) -> None:
    out = io.StringIO()
    configure_logging(log_settings(parse(["--zap-encoder", "json", "--zap-time-encoding", encoding])), stream=out)
    logging.getLogger("epp.test").info("x")
    assert check(orjson.loads(out.getvalue())["ts"])  # type: ignore[operator]


def _logged_traceback(argv: list[str]) -> list[bool]:
    out = io.StringIO()
    configure_logging(log_settings(parse(["--zap-encoder", "json", *argv])), stream=out)
    log = logging.getLogger("epp.test")
    for method in (log.warning, log.error):
        try:
            raise RuntimeError("boom")
        except RuntimeError:
            method("failed", exc_info=True)
    return ["stacktrace" in orjson.loads(line) for line in out.getvalue().splitlines()]


def test_zap_stacktrace_level_decides_which_records_keep_their_traceback(restore_root: logging.Logger) -> None:
    assert _logged_traceback([]) == [False, True]  # default: error
    assert _logged_traceback(["--zap-stacktrace-level", "panic"]) == [False, False]
    assert _logged_traceback(["--zap-stacktrace-level=info"]) == [True, True]
    assert _logged_traceback(["--zap-devel"]) == [True, True]  # development mode: from warn on
