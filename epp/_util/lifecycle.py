"""Lifecycle helpers: ``async with`` for components with ``start``/``stop``, and stopping owned tasks."""

from __future__ import annotations

import asyncio
from types import TracebackType
from typing import Any, Self


class AsyncService:
    """Mixin: ``async with x:`` is ``await x.start()`` … ``await x.stop()``.

    ``stop`` must be safe after a failed or partial ``start``: a component that fails to start cleans
    up after itself, because ``async with`` never calls ``__aexit__`` when ``__aenter__`` raises.
    """

    async def start(self) -> None:
        raise NotImplementedError

    async def stop(self) -> None:
        raise NotImplementedError

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()


async def cancel_and_wait(task: asyncio.Task[Any]) -> None:
    """Cancel a background task we own and wait until it has ended.

    The task's own ``CancelledError`` is swallowed, but a cancellation aimed at the *caller* (its
    task is being cancelled while it waits here) still propagates, so shutdown code stays cancellable.
    """
    task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        current = asyncio.current_task()
        if current is not None and current.cancelling():
            raise
