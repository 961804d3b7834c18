"""Collects a request body arriving in pieces, refusing it as soon as it passes the size limit."""

from __future__ import annotations

from epp.request.errors import RequestError

DEFAULT_MAX_BODY_BYTES = 16 * 1024 * 1024


class BodyBuffer:
    """Appends chunks until ``limit`` bytes; the chunk that would cross it raises 413 and is not kept.

    Memory therefore never exceeds ``limit`` plus one chunk in flight, however long the client streams.
    """

    __slots__ = ("limit", "_chunks", "_size")

    def __init__(self, limit: int = DEFAULT_MAX_BODY_BYTES) -> None:
        if limit < 0:
            raise ValueError("body limit must be >= 0")
        self.limit = limit
        self._chunks: list[bytes] = []
        self._size = 0

    def append(self, chunk: bytes) -> None:
        if not chunk:
            return
        size = self._size + len(chunk)
        if size > self.limit:
            raise RequestError(
                413,
                f"request body exceeds the limit of {self.limit} bytes",
                code="request_too_large",
            )
        self._chunks.append(chunk)
        self._size = size

    def __len__(self) -> int:
        return self._size

    def getvalue(self) -> bytes:
        """The whole body; joins once and keeps the joined copy, so calling twice is cheap."""
        if len(self._chunks) > 1:
            self._chunks = [b"".join(self._chunks)]
        return self._chunks[0] if self._chunks else b""
