"""epp: an endpoint picker for LLM inference behind Envoy (GIE-compatible)."""

__version__ = "0.1.0"
