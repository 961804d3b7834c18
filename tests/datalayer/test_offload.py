"""``ThreadOffload``: jobs computed on a worker thread, finished on the event loop in submission order,
bounded, and stopped without losing or crashing on what is in flight."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable

import pytest
from prometheus_client import CollectorRegistry

from epp._util.offload import INLINE, Split
from epp.datalayer.offload import ThreadOffload
from tests.conftest import wait_for


def job(log: list[str], name: str, gate: threading.Event | None = None, fail: bool = False) -> Split[None]:
    """A job whose compute waits for ``gate`` (if any) and whose finishing step logs ``name`` and the thread."""

    def compute() -> str:
        if gate is not None:
            assert gate.wait(10)
        if fail:
            raise ValueError("bad prompt")
        return threading.current_thread().name

    def finish(worker: str) -> None:
        assert worker.startswith("epp-prompt-rest")
        assert threading.current_thread() is threading.main_thread()  # the loop's thread
        log.append(name)

    return Split.of(compute, finish)


def discarding(log: list[str], name: str) -> Callable[[], None]:
    return lambda: log.append(f"discard {name}")


async def test_finishing_steps_run_on_the_loop_in_submission_order() -> None:
    offload = ThreadOffload(max_in_flight=4, workers=2)
    await offload.start()
    log: list[str] = []
    slow, fast = threading.Event(), threading.Event()
    assert offload.submit(job(log, "first", slow), discarding(log, "first"))
    assert offload.submit(job(log, "second", fast), discarding(log, "second"))
    fast.set()  # the second computes first (two workers) but finishes after the first
    await asyncio.sleep(0.05)
    assert log == [] and offload.in_flight == 2
    slow.set()
    await wait_for(lambda: offload.in_flight == 0, what="both jobs finished")
    assert log == ["first", "second"]
    assert offload.counts == {"applied": 2, "skipped": 0, "failed": 0, "cancelled": 0}
    await offload.stop()


async def test_a_full_offload_refuses_and_counts_and_a_failed_compute_is_discarded() -> None:
    registry = CollectorRegistry()
    offload = ThreadOffload(max_in_flight=2)
    offload.register_metrics(registry)
    log: list[str] = []
    assert not offload.submit(job(log, "early"), discarding(log, "early"))  # not started: refused
    await offload.start()
    gate = threading.Event()
    assert offload.submit(job(log, "a", gate), discarding(log, "a"))
    assert offload.submit(job(log, "b", gate, fail=True), discarding(log, "b"))
    assert not offload.submit(job(log, "c"), discarding(log, "c"))  # two in flight: full
    assert registry.get_sample_value("epp_prompt_rest_encodes_in_flight") == 2
    gate.set()
    await wait_for(lambda: offload.in_flight == 0, what="the jobs finished")
    assert log == ["a", "discard b"]  # refused jobs are not discarded: nothing of them ran
    assert offload.counts == {"applied": 1, "skipped": 2, "failed": 1, "cancelled": 0}
    assert registry.get_sample_value("epp_prompt_rest_encodes_total", {"outcome": "skipped"}) == 2
    assert registry.get_sample_value("epp_prompt_rest_encodes_total", {"outcome": "failed"}) == 1
    await offload.stop()


async def test_stop_with_jobs_in_flight_finishes_the_running_one_and_discards_the_queued() -> None:
    offload = ThreadOffload(max_in_flight=4)
    await offload.start()
    log: list[str] = []
    gate = threading.Event()
    for name in ("running", "queued-1", "queued-2"):
        assert offload.submit(job(log, name, gate if name == "running" else None), discarding(log, name))
    await asyncio.sleep(0.02)  # the worker holds the first job
    stopping = asyncio.create_task(offload.stop())
    await asyncio.sleep(0.02)
    assert not stopping.done()  # waits for the running compute
    gate.set()
    await asyncio.wait_for(stopping, 10)
    assert log == ["running", "discard queued-1", "discard queued-2"]
    assert offload.counts["cancelled"] == 2 and offload.in_flight == 0
    assert not offload.submit(job(log, "late"), discarding(log, "late"))  # stopped: refused
    await offload.stop()  # idempotent


async def test_a_loop_that_closed_first_does_not_crash_the_worker(caplog: pytest.LogCaptureFixture) -> None:
    """The worker's wake-up after the loop is gone (a process exiting without stopping) is dropped
    (concurrent.futures would log an exception raised by it)."""
    offload = ThreadOffload()
    gate = threading.Event()
    log: list[str] = []

    def run() -> None:
        async def main() -> None:
            await offload.start()
            assert offload.submit(job(log, "orphan", gate), discarding(log, "orphan"))

        asyncio.run(main())

    await asyncio.to_thread(run)
    gate.set()
    await asyncio.sleep(0.1)
    assert log == [] and not [r for r in caplog.records if r.levelname in ("ERROR", "CRITICAL")]


def test_inline_runs_both_steps_at_once() -> None:
    log: list[str] = []
    assert INLINE.submit(Split.of(lambda: 2, lambda n: log.append(str(n))).then(lambda _: log.append("after")),
                         discarding(log, "x"))  # fmt: skip
    assert log == ["2", "after"]


@pytest.mark.parametrize(("workers", "limit"), [(0, 1), (1, 0)])
def test_bad_sizes_are_refused(workers: int, limit: int) -> None:
    with pytest.raises(ValueError, match="at least one"):
        ThreadOffload(max_in_flight=limit, workers=workers)
