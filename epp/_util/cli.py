"""What the long-running commands (``epp serve``, ``epp bbr``) share: Go-style flag types, the ext_proc
serving flags (logging flags included, from ``epp._util.logs``), and the run-until-signal loop with one
error mapping.

The loop's contract: start-up problems the operator can fix by changing flags or files (``ValueError``,
e.g. an unreadable kubeconfig) exit 2 like a usage error; a port already in use or another OS-level
failure exits 1; a clean stop after SIGTERM/SIGINT exits 0. A second signal while shutting down sets
``Shutdown.hurry``, which cuts the drain period short (in-flight streams still get their grace).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from typing import Any

from epp._util.duration import parse_duration
from epp._util.logs import add_logging_flags
from epp.request.body import DEFAULT_MAX_BODY_BYTES

SIGNALS = (signal.SIGTERM, signal.SIGINT)


PFLAG_TRUE = frozenset({"1", "t", "T", "TRUE", "true", "True"})
PFLAG_FALSE = frozenset({"0", "f", "F", "FALSE", "false", "False"})


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


def port(text: str) -> int:
    if not text.isdigit() or int(text) > 65535:
        raise argparse.ArgumentTypeError(f"invalid port {text!r}")
    return int(text)


def bool_flag(group: argparse._ArgumentGroup, name: str, default: bool, help: str) -> None:  # noqa: A002
    """A Go-style boolean flag: bare ``--name`` means true, ``--name=false`` works too."""
    group.add_argument(name, type=go_bool, nargs="?", const=True, default=default, metavar="BOOL", help=help)


def add_serving_flags(
    parser: argparse.ArgumentParser,
    *,
    grpc_port: int,
    health_port: int,
    secure: bool,
    drain: str,
    health_help: str = "gRPC health port (plaintext)",
    secure_help: str = "serve ext_proc over TLS (--secure-serving=false for plaintext)",
) -> argparse._ArgumentGroup:
    """The ext_proc server's flags (ports, TLS, drain, body limit, logging); returns the group for more."""
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
    g.add_argument("--max-body-bytes", type=int, default=DEFAULT_MAX_BODY_BYTES,
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
    """Signals seen by ``run_until_signal``: ``requested`` on the first, ``hurry`` on the second."""

    def __init__(self) -> None:
        self.requested = asyncio.Event()
        self.hurry = asyncio.Event()

    def signalled(self) -> None:
        (self.hurry if self.requested.is_set() else self.requested).set()


Setup = Callable[[contextlib.AsyncExitStack, Shutdown], Awaitable[None]]


async def run_until_signal(setup: Setup, log: logging.Logger) -> int:
    """Start everything ``setup`` enters into the exit stack, wait for SIGTERM/SIGINT, stop in reverse."""
    shutdown = Shutdown()
    loop = asyncio.get_running_loop()
    for sig in SIGNALS:
        loop.add_signal_handler(sig, shutdown.signalled)
    try:
        async with contextlib.AsyncExitStack() as stack:
            await setup(stack, shutdown)
            await shutdown.requested.wait()
            log.info("shutting down")
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
