"""``ThreadOffload``: the worker thread that takes the rest of new prompts' encoding off the event loop.

A lazily read prompt (``epp.scheduling.prefix.tokens``) is encoded to its end at its first response,
so the prefix index learns all of it. For a new 32K-token prompt that is 50-80 ms of Rust encoding;
on the event loop it stalls every other stream of ``epp serve`` for that long. The HF ``tokenizers``
batch encode releases the GIL (measured: bench/RESULTS.md "Prompt rest off the event loop"), so a
plain worker thread runs it beside the loop; the finishing steps (remembering pieces, hashing
blocks, the index update) run back on the loop, in submission order, so the index sees the same
sequence of updates as when they ran inline.

Bounded: at most ``max_in_flight`` jobs queued or running; a job submitted beyond that is refused
(the producer then skips that prompt's rest: it only feeds the index) and counted. Stopping refuses
new jobs, cancels the queued ones, waits (bounded) for the running ones and applies what finished;
a job that cannot finish is discarded through its owner's callback, on the loop.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge

from epp._util.lifecycle import AsyncService
from epp._util.offload import Split

log = logging.getLogger("epp.datalayer.offload")

DEFAULT_MAX_IN_FLIGHT = 8
"""Jobs queued or running: about half a second of 32K-token prompts on one worker; a rest learned
later than that is worth less than the memory its text holds."""

STOP_TIMEOUT = 5.0  # seconds stop waits for the running job (one encode takes well under a second)

OUTCOMES = ("applied", "skipped", "failed", "cancelled")


@dataclass(slots=True)
class _Entry:
    future: concurrent.futures.Future[Callable[[], None]]
    discard: Callable[[], None]


class ThreadOffload(AsyncService):
    """``epp._util.offload.Offload`` on worker threads, finishing on the event loop that started it.

    Outcomes (``counts``, and ``epp_prompt_rest_encodes_total{outcome}`` once ``register_metrics``
    was called): ``applied``; ``skipped`` (refused: full, or not started / stopped); ``failed``
    (``compute`` or the finishing step raised; logged once, then counted); ``cancelled`` (queued or
    unfinished at stop)."""

    def __init__(self, max_in_flight: int = DEFAULT_MAX_IN_FLIGHT, workers: int = 1) -> None:
        if max_in_flight < 1 or workers < 1:
            raise ValueError("an offload needs at least one worker and one job in flight")
        self.max_in_flight = max_in_flight
        self.workers = workers
        self.counts = dict.fromkeys(OUTCOMES, 0)
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._queue: deque[_Entry] = deque()  # submitted, oldest first; finished only from the front
        self._counter: Counter | None = None
        self._warned = False

    @property
    def in_flight(self) -> int:
        return len(self._queue)

    def register_metrics(self, registry: CollectorRegistry) -> None:
        """Export the outcomes and the jobs in flight; call before ``start``."""
        self._counter = Counter(
            "epp_prompt_rest_encodes", "Rest-of-prompt encodes (lazily read prompts hashed to their end at their first"
            " response) run off the event loop, by outcome; 'skipped': the queue was full, the prompt's rest is not learned.",
            ["outcome"], registry=registry,
        )  # fmt: skip
        for outcome in OUTCOMES:
            self._counter.labels(outcome)
        gauge = Gauge("epp_prompt_rest_encodes_in_flight", "Rest-of-prompt encodes queued or running.", registry=registry)
        gauge.set_function(lambda: len(self._queue))

    async def start(self) -> None:
        if self._executor is not None:
            raise RuntimeError("ThreadOffload is already started")
        self._loop = asyncio.get_running_loop()
        self._executor = concurrent.futures.ThreadPoolExecutor(self.workers, thread_name_prefix="epp-prompt-rest")

    def submit(self, job: Split[None], discard: Callable[[], None]) -> bool:
        """Queue ``job``'s ``compute`` on a worker; its finishing step runs on the loop after those of
        the jobs submitted before it. False (counted ``skipped``) when full or not running."""
        executor, loop = self._executor, self._loop
        if executor is None or loop is None or len(self._queue) >= self.max_in_flight:
            self._count("skipped")
            return False
        future = executor.submit(job.compute)
        self._queue.append(_Entry(future, discard))
        future.add_done_callback(lambda _: self._wake(loop))
        return True

    def _wake(self, loop: asyncio.AbstractEventLoop) -> None:
        """From the worker: finish what is done, on the loop (gone already at interpreter exit: nothing to do)."""
        try:
            loop.call_soon_threadsafe(self._finish_done)
        except RuntimeError:  # the loop is closed
            pass

    def _finish_done(self) -> None:
        """Finish the jobs at the front that are done, in submission order."""
        queue = self._queue
        while queue and queue[0].future.done():
            self._finish(queue.popleft())

    def _finish(self, entry: _Entry) -> None:
        future = entry.future
        if future.cancelled() or not future.done():
            self._count("cancelled")
            entry.discard()
            return
        try:
            future.result()()
        except Exception:  # noqa: BLE001 - a bad prompt must not stop the offload; the owner forgets the job
            self._count("failed")
            if not self._warned:
                self._warned = True
                log.warning("a rest-of-prompt encode failed; its prompt is learned only as far as the pick read it"
                            " (counted in epp_prompt_rest_encodes_total{outcome=\"failed\"}, logged once)", exc_info=True)
            entry.discard()
            return
        self._count("applied")

    def _count(self, outcome: str) -> None:
        self.counts[outcome] += 1
        if self._counter is not None:
            self._counter.labels(outcome).inc()

    async def stop(self) -> None:
        """Refuse new jobs, cancel the queued ones, wait (at most ``STOP_TIMEOUT``) for the running
        ones, then finish what completed and discard the rest, in order. Idempotent."""
        executor, self._executor = self._executor, None
        if executor is None:
            return
        executor.shutdown(wait=False, cancel_futures=True)
        running = [asyncio.wrap_future(e.future) for e in self._queue if not e.future.done()]
        if running:
            await asyncio.wait(running, timeout=STOP_TIMEOUT)
        while self._queue:
            self._finish(self._queue.popleft())
