"""Run several (policy, rate) replays of one trace on one cluster, in-process or in worker processes.

Every run builds its own scheduler and engines, so runs are independent and can go to separate
processes. Workers are spawned (not forked: the parent may run a progress thread, and forking a
threaded process is unsafe), get the trace pickled, and report progress and their result over a queue.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import queue as queue_module
import signal
import traceback
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from epp._util.clock import VirtualClock
from epp.replay.bounds import capacity_hit_ratio, chains, ideal_hit_ratio
from epp.replay.live import LiveSpec, run_live
from epp.replay.offline import ClusterSpec, OfflineReplay, RunResult
from epp.replay.policies import resolve
from epp.replay.replicas import Replicas
from epp.replay.summary import summarize
from epp.replay.traces.model import Trace


@dataclass(frozen=True, slots=True)
class Bounds:
    ideal: float
    capacity: float


@dataclass(frozen=True, slots=True)
class Job:
    """One run: a policy spec (as ``--policy`` takes it, resolved in the worker) at one rate scale,
    picked by ``replicas``."""

    policy: str
    rate_scale: float
    seed: int = 0
    replicas: Replicas = field(default_factory=Replicas)

    @property
    def label(self) -> str:
        extra = self.replicas.label
        return f"{self.policy} ×{self.rate_scale:g}" + (f" ({extra})" if extra else "")


@dataclass(slots=True)
class Outcome:
    job: Job
    summary: dict[str, Any]
    run: RunResult


Progress = Callable[[int, int], None]
"""Called with (job index, requests arrived so far)."""


def trace_bounds(trace: Trace, cluster: ClusterSpec) -> Bounds:
    """Ideal and capacity hit ratios at the trace's own block granularity (engine blocks if it has none)."""
    block_tokens = trace.block_tokens or cluster.engine.block_size
    request_chains = chains(trace.requests, block_tokens)
    return Bounds(ideal_hit_ratio(request_chains), capacity_hit_ratio(request_chains, cluster.kv_tokens() // block_tokens))


def run_one(trace: Trace, job: Job, cluster: ClusterSpec, bounds: Bounds, progress: Callable[[int], None]) -> Outcome:
    policy = resolve(job.policy)
    clock = VirtualClock()
    schedulers, view = job.replicas.build(policy, clock, job.seed)
    run = OfflineReplay(trace.requests, schedulers, cluster, clock, job.rate_scale, progress=progress,
                        admission=policy.admission, exchange=job.replicas.exchange(schedulers, clock)).run()
    summary = summarize(
        run, policy.label, job.rate_scale, bounds.ideal, bounds.capacity, replicas=job.replicas.count, prefix_view=view
    )
    return Outcome(job, summary, run)


def run_live_job(trace: Trace, job: Job, cluster: ClusterSpec, bounds: Bounds, spec: LiveSpec) -> Outcome:
    """``job`` through real processes (``epp.replay.live``); one at a time, they share the CPU."""
    run = run_live(trace.requests, job.policy, cluster, job.rate_scale, spec)
    return Outcome(job, summarize(run, job.policy, job.rate_scale, bounds.ideal, bounds.capacity), run)


def _worker(
    index: int, trace: Trace, job: Job, cluster: ClusterSpec, bounds: Bounds, queue: multiprocessing.Queue[Any]
) -> None:
    # Workers start with SIGINT ignored (``_sigint_ignored``): a terminal's Ctrl-C reaches the whole process
    # group, the parent handles it and kills the workers, which must not each print a traceback meanwhile.
    try:
        outcome = run_one(trace, job, cluster, bounds, lambda n: queue.put(("progress", index, n)))
        queue.put(("done", index, outcome))
    except Exception:  # report it to the parent, which owns the error
        queue.put(("error", index, traceback.format_exc()))


@contextlib.contextmanager
def _sigint_ignored() -> Iterator[None]:
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


class RunError(Exception):
    """A worker failed; the message carries its traceback."""


def run_jobs(
    trace: Trace, jobs: Sequence[Job], cluster: ClusterSpec, bounds: Bounds, workers: int, progress: Progress
) -> list[Outcome]:
    """Outcomes in ``jobs`` order. ``workers`` > 1 runs up to that many processes at a time."""
    if workers <= 1 or len(jobs) <= 1:
        return [run_one(trace, job, cluster, bounds, partial(progress, i)) for i, job in enumerate(jobs)]
    ctx = multiprocessing.get_context("spawn")
    queue: multiprocessing.Queue[Any] = ctx.Queue()
    results: dict[int, Outcome] = {}
    running: dict[int, multiprocessing.process.BaseProcess] = {}
    todo = list(enumerate(jobs))
    try:
        while todo or running:
            while todo and len(running) < workers:
                index, job = todo.pop(0)
                worker = ctx.Process(target=_worker, args=(index, trace, job, cluster, bounds, queue), daemon=True)
                with _sigint_ignored():  # inherited by the child from birth: no traceback mid-import on Ctrl-C
                    worker.start()
                running[index] = worker
            try:
                kind, index, payload = queue.get(timeout=1.0)
            except queue_module.Empty:
                dead = [i for i, p in running.items() if p.exitcode not in (None, 0)]
                if dead:
                    raise RunError(f"run {jobs[dead[0]].label} died (exit code {running[dead[0]].exitcode})") from None
                continue
            if kind == "progress":
                progress(index, payload)
                continue
            running.pop(index).join()
            if kind == "error":
                raise RunError(f"run {jobs[index].label} failed:\n{payload}")
            results[index] = payload
    finally:
        for proc in running.values():
            proc.kill()
            proc.join()
    return [results[i] for i in range(len(jobs))]
