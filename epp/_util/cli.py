"""What the long-running commands (``epp serve``, ``epp bbr``) share: Go-style flag types, the ext_proc
serving flags (logging flags included, from ``epp._util.logs``), and the run-until-signal loop with one
error mapping.

The loop's contract: start-up problems the operator can fix by changing flags or files (``ValueError``,
e.g. an unreadable kubeconfig) exit 2 like a usage error; a port already in use or another OS-level
failure exits 1; a clean stop after SIGTERM/SIGINT exits 0. A second signal while shutting down ends the
drain period (``Shutdown.hurry``); a second Ctrl-C (SIGINT) also cancels streams still open instead of
giving them their grace (``Shutdown.now``), so an operator at a terminal gets the prompt back at once.

``EppArgumentParser`` and ``HelpFormatter`` are what every subcommand's parser is made of: a usage error is
one line plus a hint (not the whole usage), and each flag's default shows once in ``--help``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import difflib
import logging
import signal
import sys
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from typing import Any, NoReturn

from epp._util.duration import parse_duration
from epp._util.logs import add_logging_flags

SIGNALS = (signal.SIGTERM, signal.SIGINT)


PFLAG_TRUE = frozenset({"1", "t", "T", "TRUE", "true", "True"})
PFLAG_FALSE = frozenset({"0", "f", "F", "FALSE", "false", "False"})


class EppArgumentParser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose usage errors are one line and a hint, exit status 2.

    argparse's default prints the whole usage synopsis (30 lines for ``epp serve``) before the line that
    says what is wrong; an operator reading a crash-looping pod's log needs that line, not the synopsis.
    """

    def error(self, message: str) -> NoReturn:
        hint = _did_you_mean(message, self)
        sys.stderr.write(f"{self.prog}: error: {message}\n{hint}(`{self.prog} --help` lists every flag)\n")
        sys.exit(2)


def _did_you_mean(message: str, parser: argparse.ArgumentParser) -> str:
    """'did you mean --x?' for an unrecognized flag close to a known one; '' otherwise."""
    prefix = "unrecognized arguments: "
    if not message.startswith(prefix):
        return ""
    known = [flag for action in parser._actions for flag in action.option_strings]
    for word in message[len(prefix):].split():
        match = difflib.get_close_matches(word.split("=", 1)[0], known, n=1)
        if match:
            return f"did you mean {match[0]}? "
    return ""


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """``--help`` layout for every subcommand: a flag's default appended once, and only when it says
    something (not when the help text already names it, not for empty or unset defaults, not for plain
    on/off switches); descriptions with line breaks kept as written, single paragraphs wrapped."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if ("default" in text.lower() or action.default in (None, "", argparse.SUPPRESS)
                or (action.nargs == 0 and isinstance(action.default, bool))):
            return text
        return super()._get_help_string(action) or text

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        if "\n" in text.strip():
            return super()._fill_text(text, width, indent)  # RawDescription: as written
        return argparse.HelpFormatter._fill_text(self, text, width, indent)


def go_bool(text: str) -> bool:
    """A boolean flag value exactly as pflag reads it (Go's ``strconv.ParseBool``): ``--flag`` alone,
    ``--flag=true|false``, 1/0, t/f, T/F, TRUE/FALSE, True/False; anything else is a usage error."""
    if text in PFLAG_TRUE:
        return True
    if text in PFLAG_FALSE:
        return False
    raise argparse.ArgumentTypeError(f"expected true or false (as Go's strconv.ParseBool), got {text!r}")


def pflag_booleans(parser: argparse.ArgumentParser, argv: Sequence[str]) -> tuple[list[str], list[str]]:
    """pflag never gives a boolean flag the next argument: ``--flag false`` is ``--flag`` (true) followed
    by a stray positional ``false``, which the reference pickers ignore. Returns ``argv`` with such strays
    removed (so argparse does not read them as the flag's value) and the strays, for a warning."""
    booleans = {opt for action in parser._actions if action.type is go_bool for opt in action.option_strings}
    out: list[str] = []
    strays: list[str] = []
    args = iter(argv)
    for token in args:
        out.append(token)
        if token == "--":
            out.extend(args)
            break
        if token in booleans:
            following = next(args, None)
            if following is None:
                break
            if following.startswith("-"):
                out.append(following)
            else:
                strays.append(following)
    return out, strays


def duration(text: str) -> float:
    """A Go duration flag (``50ms``, ``2s``, ``1m30s``) in seconds."""
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def seconds(text: str) -> float:
    """A duration flag that also takes a bare number of seconds (``15``, ``15s``, ``1m``, ``0.5``)."""
    with contextlib.suppress(ValueError):
        value = float(text)
        if value >= 0:
            return value
        raise argparse.ArgumentTypeError(f"invalid duration {text!r}: must not be negative")
    return duration(text)


def port(text: str) -> int:
    """A TCP port, 0 (pick a free one) to 65535."""
    if not text.strip().isdigit() or int(text) > 65535:
        raise argparse.ArgumentTypeError(f"invalid port {text!r}: expected 0-65535 (0 = any free port)")
    return int(text)


def non_negative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {text!r}")
    return value


def bool_flag(group: argparse._ActionsContainer, name: str, default: bool, help: str) -> None:  # noqa: A002
    """A Go-style boolean flag: bare ``--name`` means true, ``--name=false`` works too."""
    group.add_argument(name, type=go_bool, nargs="?", const=True, default=default, metavar="BOOL", help=help)


def add_serving_flags(
    parser: argparse.ArgumentParser,
    *,
    grpc_port: int,
    health_port: int,
    secure: bool,
    drain: str,
    max_body_bytes: int,
    health_help: str = "gRPC health port (plaintext)",
    secure_help: str = "serve ext_proc over TLS (--secure-serving=false for plaintext)",
) -> argparse._ArgumentGroup:
    """The ext_proc server's flags (ports, TLS, drain, body limit, logging); returns the group for more.
    ``max_body_bytes`` is the caller's default limit (``epp.request.body``: ``_util`` knows no request)."""
    g = parser.add_argument_group("serving")
    g.add_argument("--grpc-port", type=port, default=grpc_port, help="ext_proc gRPC port")
    g.add_argument("--grpc-health-port", type=port, default=health_port, help=health_help)
    g.add_argument("--bind-address", default="", help="address to listen on; empty = all interfaces")
    bool_flag(g, "--secure-serving", secure, secure_help)
    g.add_argument("--cert-path", default="",
                   help="directory with tls.crt and tls.key; empty = generate a self-signed ECDSA certificate")
    bool_flag(g, "--enable-cert-reload", False, "reload tls.crt/tls.key from --cert-path when they change")
    g.add_argument("--drain-timeout", type=duration, default=drain, metavar="DURATION",
                   help="on SIGTERM: health turns NOT_SERVING at once and new streams are still served for this "
                        "long, so gateways move away before the port closes (a second signal ends it early)")
    g.add_argument("--shutdown-grace", type=duration, default="90s", metavar="DURATION",
                   help="after the drain period: how long streams still open may take to finish before they are "
                        "cancelled (keep drain + grace below the pod's terminationGracePeriodSeconds)")
    g.add_argument("--max-body-bytes", type=int, default=max_body_bytes,
                   help="largest request body accepted; larger bodies get 413")
    add_logging_flags(parser)
    return g


def run_async(main: Coroutine[Any, Any, int]) -> int:
    """Run ``main`` on uvloop when installed (it is a dependency except on Windows)."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover
        return asyncio.run(main)
    return uvloop.run(main)


class Shutdown:
    """Signals seen by ``run_until_signal``: ``requested`` on the first. Another SIGTERM (an orchestrator
    insisting) sets ``hurry``: the drain ends, open streams keep their grace. Another SIGINT (an operator's
    second Ctrl-C) sets ``hurry`` and ``now``: open streams are cancelled too, and the process exits."""

    def __init__(self) -> None:
        self.requested = asyncio.Event()
        self.hurry = asyncio.Event()
        self.now = asyncio.Event()

    def signalled(self, sig: signal.Signals = signal.SIGTERM) -> None:
        if not self.requested.is_set():
            self.requested.set()
            return
        self.hurry.set()
        if sig == signal.SIGINT and not self.now.is_set():
            logging.getLogger("epp").warning("second Ctrl-C: stopping now, open streams are cancelled")
            self.now.set()


Setup = Callable[[contextlib.AsyncExitStack, Shutdown], Awaitable[None]]


async def run_until_signal(setup: Setup, log: logging.Logger) -> int:
    """Start everything ``setup`` enters into the exit stack, wait for SIGTERM/SIGINT, stop in reverse."""
    shutdown = Shutdown()
    loop = asyncio.get_running_loop()
    for sig in SIGNALS:
        loop.add_signal_handler(sig, shutdown.signalled, sig)
    try:
        async with contextlib.AsyncExitStack() as stack:
            await setup(stack, shutdown)
            await shutdown.requested.wait()
            log.info("shutting down (press Ctrl-C again to stop now)")
    except ValueError as exc:  # bad configuration found while starting (kubeconfig, files)
        log.error("%s", exc)
        return 2
    except (OSError, RuntimeError) as exc:  # a port already in use (grpc raises RuntimeError)
        log.error("cannot serve: %s", exc)
        return 1
    finally:
        for sig in SIGNALS:
            loop.remove_signal_handler(sig)
    log.info("stopped")
    return 0
