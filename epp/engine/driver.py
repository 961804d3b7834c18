"""A reference virtual-time loop for one engine: the discrete-event twin of the HTTP simulator.

Replay drives many engines from one heap; this loop drives one, and exists so tests and benchmarks
can compare the engine in virtual time with the same engine behind HTTP. Semantics (shared with the
HTTP server): a request arriving while a step runs joins the next step; an idle engine starts a step
at the first arrival.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from epp.engine.core import EngineCore
from epp.engine.request import EngineRequest


@dataclass(slots=True)
class Completion:
    """One finished request, in the engine's clock."""

    request_id: str
    arrival_time: float
    first_token_time: float
    finish_time: float
    num_prompt_tokens: int
    num_cached_tokens: int
    num_output_tokens: int

    @property
    def ttft(self) -> float:
        return self.first_token_time - self.arrival_time


def run_virtual(core: EngineCore, requests: Iterable[EngineRequest], *, fuse: bool = True) -> list[Completion]:
    """Feed ``requests`` (sorted by ``arrival_time``) to ``core`` and step until all finish.

    ``fuse`` passes the next arrival as the step horizon, letting the core fuse decode iterations;
    results are the same either way.
    """
    pending = sorted(requests, key=lambda r: r.arrival_time)
    done: list[Completion] = []
    now = pending[0].arrival_time if pending else 0.0
    i = 0
    while i < len(pending) or core.has_unfinished_requests():
        while i < len(pending) and pending[i].arrival_time <= now:
            core.add_request(pending[i])
            i += 1
        if not core.has_unfinished_requests():
            now = pending[i].arrival_time
            continue
        horizon = pending[i].arrival_time if i < len(pending) else float("inf")
        out = core.step(now, horizon if fuse else None)
        now += out.duration
        for o in out.outputs:
            if o.finished:
                assert o.first_token_time is not None and o.finish_time is not None
                done.append(
                    Completion(
                        o.request_id,
                        o.arrival_time,
                        o.first_token_time,
                        o.finish_time,
                        o.num_prompt_tokens,
                        o.num_cached_tokens,
                        o.num_output_tokens,
                    )
                )
    return done
