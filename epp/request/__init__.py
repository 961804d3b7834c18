"""Incoming OpenAI requests as typed values, and the errors they can end in."""

from epp.request.errors import RequestError
from epp.request.types import LLMRequest, RequestKind

__all__ = ["LLMRequest", "RequestError", "RequestKind"]
