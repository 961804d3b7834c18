"""Log formats and the safety of client-supplied values in logs."""

from __future__ import annotations

import argparse
import io
import logging

import orjson
import pytest

from epp._util.logs import JSON, TEXT, add_logging_flags, clip, configure_logging, fields


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
