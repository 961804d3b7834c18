"""Runs an ``EngineCore`` on the event loop in (scaled) wall-clock time.

The loop is vLLM's busy loop: step, let the step's GPU time pass (``duration × time_scale`` of wall
time), deliver the outputs, step again. Requests submitted meanwhile join the next step. Engine time
is wall time divided by ``time_scale`` (``time_scale`` 0 = as fast as the CPU allows, engine time then
advances by step durations only). When the process lags behind (a step's outputs delivered late),
the next step still starts where the previous one ended — or at the latest arrival, if later — so the
engine timeline matches the virtual-time driver's and no request is served before it arrived.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from epp._util.clock import Clock
from epp.engine.core import EngineCore, RequestOutput, StepOutput
from epp.engine.request import EngineRequest

StepListener = Callable[[StepOutput, float], None]
"""Called with each step and its end time (engine clock) before outputs are delivered."""


class EngineLoop:
    def __init__(self, core: EngineCore, *, time_scale: float, clock: Clock, on_step: StepListener) -> None:
        if time_scale < 0:
            raise ValueError("time_scale must be >= 0")
        self.core = core
        self._scale = time_scale
        self._clock = clock
        self._wall0 = clock.now()
        self._on_step = on_step
        self._end = 0.0
        self._last_arrival = 0.0
        self._busy = False
        self._wake = asyncio.Event()
        self._queues: dict[str, asyncio.Queue[RequestOutput]] = {}

    def now(self) -> float:
        """The engine clock, in seconds since start."""
        if self._scale > 0:
            return (self._clock.now() - self._wall0) / self._scale
        return self._end

    def submit(
        self, request_id: str, prompt: list[int], max_tokens: int, lora: str | None, cache_salt: str | None = None,
        arrival: float | None = None,
    ) -> asyncio.Queue[RequestOutput]:
        """Queue a request arriving now (or, for its latency metrics, at the earlier engine time ``arrival``:
        work done for it before, such as its media encoding); its outputs will appear on the returned
        queue. Raises ``ValueError`` when the engine refuses it (too long, unknown adapter)."""
        arrival = self.now() if arrival is None else min(arrival, self.now())
        self.core.add_request(EngineRequest(request_id, prompt, max_tokens, arrival, lora, cache_salt))
        self._last_arrival = max(self._last_arrival, arrival)
        queue: asyncio.Queue[RequestOutput] = asyncio.Queue()
        self._queues[request_id] = queue
        self._wake.set()
        return queue

    def abort(self, request_id: str) -> None:
        if self._queues.pop(request_id, None) is not None:
            self.core.abort(request_id)

    async def run(self) -> None:
        core = self.core
        while True:
            if not core.has_unfinished_requests():
                self._busy = False
                self._wake.clear()
                await self._wake.wait()
                continue
            start = max(self._end, self._last_arrival) if self._busy else max(self.now(), self._last_arrival)
            self._busy = True
            out = core.step(start)
            self._end = end = start + out.duration
            if self._scale > 0:
                delay = self._wall0 + end * self._scale - self._clock.now()
                await asyncio.sleep(delay if delay > 0 else 0)
            else:
                await asyncio.sleep(0)
            self._on_step(out, end)
            queues = self._queues
            for output in out.outputs:
                queue = queues.get(output.request_id)
                if queue is not None:
                    queue.put_nowait(output)
                    if output.finished:
                        del queues[output.request_id]
