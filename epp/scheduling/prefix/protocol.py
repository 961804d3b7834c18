"""The prefix-index contract the prefix plugins depend on."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from epp.datastore import Endpoint


class PrefixIndex(Protocol):
    """Which endpoints hold which prompt blocks.

    Hashes are a prompt's chained block hashes, first block first (``prompt_block_hashes``), so equal
    leading hashes mean an equal prefix. Implementations bound their own memory and are told about
    removed endpoints through the datastore-listener methods.
    """

    def match(self, hashes: Sequence[int], endpoints: Sequence[str]) -> list[int]:
        """Per endpoint (aligned with ``endpoints``), how many of the blocks it holds, counting from the
        first block up to the first block no endpoint holds."""
        ...

    def add(self, endpoint: str, hashes: Sequence[int]) -> None:
        """Record that ``endpoint`` was sent (and so will cache) these blocks."""
        ...

    def discard(self, endpoint: str, hashes: Sequence[int]) -> None:
        """``endpoint`` does not hold these blocks after all (the request that ``add`` recorded failed)."""
        ...

    def remove(self, endpoint: str) -> None:
        """Forget everything about ``endpoint``."""
        ...

    def entries(self) -> int:
        """(block, endpoint) entries held now: the prefix-indexer size metric."""
        ...

    def endpoint_added(self, endpoint: Endpoint) -> None: ...

    def endpoint_removed(self, endpoint: Endpoint) -> None: ...
