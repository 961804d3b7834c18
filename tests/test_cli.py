"""The ``epp`` command as a new user meets it: short usage errors, readable ``--help``, flag values that
fail with a clear message instead of a traceback or a silently different value."""

from __future__ import annotations

import argparse
import logging
import socket

import pytest

from epp._util.cli import HelpFormatter
from epp._util.logs import TEXT, configure_logging
from epp.cli import build_parser, main


def _error(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    return capsys.readouterr().err


def test_a_bad_flag_value_is_one_line_and_a_hint(capsys: pytest.CaptureFixture[str]) -> None:
    err = _error(["serve", "--grpc-port", "x"], capsys)
    assert err.splitlines() == [
        "epp serve: error: argument --grpc-port: invalid port 'x': expected 0-65535 (0 = any free port)",
        "(`epp serve --help` lists every flag)",
    ]


def test_an_unknown_flag_names_the_subcommand_and_suggests_the_close_one(capsys: pytest.CaptureFixture[str]) -> None:
    err = _error(["serve", "--grpc-prot", "9002"], capsys)
    assert err.splitlines() == [
        "epp serve: error: unrecognized arguments: --grpc-prot 9002",
        "did you mean --grpc-port? (`epp serve --help` lists every flag)",
    ]
    assert len(_error(["bogus"], capsys).splitlines()) == 2


def _subparsers() -> dict[str, argparse.ArgumentParser]:
    (action,) = [a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(action.choices)


@pytest.mark.parametrize("command", sorted(_subparsers()))
def test_help_states_each_default_once(command: str) -> None:
    parser = _subparsers()[command]
    formatter = HelpFormatter(prog=parser.prog)
    for action in parser._actions:
        text = formatter._expand_help(action) if action.help else ""
        assert text.count("(default") <= 1, f"{command} {action.option_strings}: {text}"
        assert "(default: )" not in text and "(default: None)" not in text, f"{command} {action.option_strings}"
    assert parser.format_help()  # renders


@pytest.mark.parametrize(("value", "seconds"), [("15s", 15.0), ("1m30s", 90.0), ("20", 20.0), ("0.5", 0.5)])
def test_ha_durations_take_go_durations_and_bare_seconds(value: str, seconds: float) -> None:
    args = build_parser().parse_args(["serve", "--ha-lease-duration", value, "--ha-retry-period", value])
    assert args.ha_lease_duration == args.ha_retry_period == seconds
    assert build_parser().parse_args(["serve"]).ha_renew_deadline == 10.0


def test_ha_duration_rejects_nonsense(capsys: pytest.CaptureFixture[str]) -> None:
    assert "argument --ha-lease-duration: invalid duration '-1'" in _error(["serve", "--ha-lease-duration", "-1"], capsys)
    assert "invalid duration 'soon'" in _error(["serve", "--ha-renew-deadline", "soon"], capsys)


def test_debug_verbosity_leaves_out_grpc_internals_until_asked() -> None:
    root = logging.getLogger()
    saved = root.level, list(root.handlers), logging.getLogger("grpc").level
    try:
        configure_logging(TEXT, 3)
        assert logging.getLogger("epp.serve").isEnabledFor(logging.DEBUG)
        assert not logging.getLogger("grpc._cython.cygrpc").isEnabledFor(logging.DEBUG)
        assert logging.getLogger("grpc._cython.cygrpc").isEnabledFor(logging.INFO)
        configure_logging(TEXT, 5)
        assert logging.getLogger("grpc._cython.cygrpc").isEnabledFor(logging.DEBUG)
    finally:
        root.setLevel(saved[0])
        root.handlers[:] = saved[1]
        logging.getLogger("grpc").setLevel(saved[2])


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--port", "99999"], "argument --port: invalid port '99999'"),
        (["--port", "-1"], "argument --port: invalid port '-1'"),
        (["--time-scale", "-1"], "argument --time-scale: must be 0 or more, got '-1'"),
    ],
)
def test_sim_refuses_impossible_ports_and_time_scales(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    err = _error(["sim", *argv], capsys)
    assert err.startswith(f"epp sim: error: {message}") and len(err.splitlines()) == 2


def test_sim_on_a_busy_port_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    root = logging.getLogger()
    monkeypatch.setattr(root, "handlers", list(root.handlers))  # epp sim's basicConfig must not outlive the test
    monkeypatch.setattr(root, "level", root.level)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(SystemExit) as info:
            main(["sim", "--port", str(port), "--kv-cache-blocks", "64"])
    message = str(info.value.code)
    assert message.startswith(f"epp sim: cannot listen on 127.0.0.1:{port}:") and "in use" in message


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--engines", "9"], "epp demo: error: argument --engines: must be a number from 1 to 8, got '9'"),
        (["--policy", "nope"], "epp demo: --policy nope: 'nope' is neither a preset"),
    ],
)
def test_demo_errors_are_prefixed_and_exit_2(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    try:
        code = main(["demo", *argv])
    except SystemExit as exit_:
        code = int(exit_.code or 0)
    assert code == 2
    assert capsys.readouterr().err.startswith(message)
