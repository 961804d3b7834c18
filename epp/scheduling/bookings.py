"""What a plugin booked for each request in flight, so the request's end can undo it when it failed."""

from __future__ import annotations

from collections import OrderedDict
from typing import Generic, TypeVar

T = TypeVar("T")

DEFAULT_LIMIT = 65_536


class Bookings(Generic[T]):
    """Request id → what its PreRequest booked. Bounded (the oldest booking is dropped first) so that
    requests whose end is never reported — a caller that stops, a lost stream — cannot grow it."""

    __slots__ = ("_items", "_limit")

    def __init__(self, limit: int = DEFAULT_LIMIT) -> None:
        if limit < 1:
            raise ValueError("a booking limit must be at least 1")
        self._items: OrderedDict[str, T] = OrderedDict()
        self._limit = limit

    def __len__(self) -> int:
        return len(self._items)

    def put(self, request_id: str, value: T) -> None:
        if not request_id:
            return
        self._items.pop(request_id, None)
        self._items[request_id] = value
        if len(self._items) > self._limit:
            self._items.popitem(last=False)

    def pop(self, request_id: str) -> T | None:
        return self._items.pop(request_id, None)
