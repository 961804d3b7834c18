"""The ``epp`` command: one subcommand per role, each defined next to the code it runs."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from epp import __version__
from epp._util.cli import EppArgumentParser, HelpFormatter, pflag_booleans

# (subcommand, module that defines ``configure_parser(parser)``, one-line help).
# Modules are imported only to build their parser; heavy imports happen when a command runs.
SUBCOMMANDS: tuple[tuple[str, str, str], ...] = (
    ("serve", "epp.app", "Run the endpoint picker (ext_proc gRPC server)"),
    ("sim", "epp.sim.cli", "Run a vLLM-compatible simulated engine"),
    ("demo", "epp.demo", "Run a local demo: real Envoy + epp serve + local engines, sample traffic, routing table"),
    ("bbr", "epp.bbr", "Run the body-based router (sets the model header for route matching)"),
    ("replay", "epp.replay.cli", "Score routing policies on request traces"),
    ("envoy-config", "epp.envoy.cli", "Print an Envoy bootstrap config for a picker run outside Kubernetes"),
)


DEFAULT_COMMAND = "serve"
_TOP_LEVEL_FLAGS = frozenset({"-h", "--help", "--version"})


def build_parser() -> argparse.ArgumentParser:
    parser = EppArgumentParser(
        prog="epp", description="Endpoint picker for LLM inference behind Envoy.",
        epilog=f"Arguments starting with a flag run `epp {DEFAULT_COMMAND}` (e.g. `epp --pool-name=p`), so "
               "charts that set only flags as container args (replacing the image's CMD) work unchanged.",
    )
    parser.add_argument("--version", action="version", version=f"epp {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, module, help_text in SUBCOMMANDS:
        sub_parser = sub.add_parser(name, help=help_text, description=help_text, formatter_class=HelpFormatter)
        importlib.import_module(module).configure_parser(sub_parser)
    return parser


def with_default_command(argv: Sequence[str]) -> list[str]:
    """``argv`` with ``serve`` put first when it starts with a (non top-level) flag."""
    args = list(argv)
    if args and args[0].startswith("-") and args[0].split("=", 1)[0] not in _TOP_LEVEL_FLAGS:
        return [DEFAULT_COMMAND, *args]
    return args


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    command, *rest = with_default_command(sys.argv[1:] if argv is None else argv) or [""]
    strays: list[str] = []
    if command in _subparsers(parser):
        rest, strays = pflag_booleans(_subparsers(parser)[command], rest)
    args, unknown = parser.parse_known_args([command, *rest] if command else [])
    if unknown:  # reported by the subcommand's parser, so the error names it and suggests its flags
        subcommand = _subparsers(parser).get(getattr(args, "command", None) or "", parser)
        subcommand.error(f"unrecognized arguments: {' '.join(unknown)}")
    for stray in strays:
        print(f"epp: ignoring argument {stray!r}: a boolean flag takes its value as --flag={stray}, as pflag does",
              file=sys.stderr)
    run = getattr(args, "run", None)
    if run is None:
        parser.print_help(sys.stderr)
        return 2
    return int(run(args) or 0)


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    actions = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(actions[0].choices) if actions else {}
