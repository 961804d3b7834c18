"""Request failures that end in an OpenAI-style JSON error with an HTTP status."""

from __future__ import annotations

import orjson


class RequestError(Exception):
    """A request epp answers itself instead of routing it.

    ``error_type`` and ``code`` follow OpenAI's error object (``invalid_request_error``,
    ``model_not_found`` …); ``reason`` is the reference's ``x-llm-d-request-dropped-reason`` value
    where it defines one.
    """

    def __init__(
        self,
        status: int,
        message: str,
        *,
        error_type: str = "invalid_request_error",
        code: str | None = None,
        reason: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.error_type = error_type
        self.code = code
        self.reason = reason

    def to_json(self) -> bytes:
        """``{"error": {"message", "type", "param", "code"}}`` as OpenAI clients parse it."""
        return orjson.dumps(
            {"error": {"message": self.message, "type": self.error_type, "param": None, "code": self.code}}
        )

    def __repr__(self) -> str:
        return f"RequestError({self.status}, {self.message!r}, code={self.code!r})"
