"""Stopping owned tasks without swallowing the caller's own cancellation."""

from __future__ import annotations

import asyncio

import pytest

from epp._util.lifecycle import cancel_and_wait


async def test_cancel_and_wait_ends_the_task_quietly() -> None:
    task = asyncio.create_task(asyncio.sleep(3600))
    await cancel_and_wait(task)
    assert task.cancelled()


async def test_a_cancellation_aimed_at_the_caller_still_propagates() -> None:
    release = asyncio.Event()
    unwinding = asyncio.Event()

    async def slow_to_stop() -> None:
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            unwinding.set()
            await release.wait()  # cleanup that takes a while
            raise

    owned = asyncio.create_task(slow_to_stop())
    await asyncio.sleep(0)
    caller = asyncio.create_task(cancel_and_wait(owned))
    await unwinding.wait()
    caller.cancel()  # e.g. the shutdown itself is being cancelled
    release.set()
    with pytest.raises(asyncio.CancelledError):
        await caller
    assert caller.cancelled() and owned.cancelled()
