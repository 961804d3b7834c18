"""The body-based router (``epp bbr``): copies the OpenAI body's model into headers HTTPRoutes match on."""

from epp.bbr.cli import configure_parser

__all__ = ["configure_parser"]
