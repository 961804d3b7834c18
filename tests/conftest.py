"""Shared fixtures and builders."""

from __future__ import annotations

import asyncio
import inspect
import signal
from collections.abc import Awaitable, Callable

from epp.datastore import Endpoint, EndpointMetrics, EndpointState
from epp.request import LLMRequest, RequestKind


def pytest_configure() -> None:
    """Take Ctrl-C as a terminal delivers it, whoever started the suite. A shell's background job (and
    some CI runners) start it with SIGINT ignored, an ignored signal stays ignored across exec, and then
    the Ctrl-C tests' ``epp demo``/``epp replay`` subprocesses would never see the signal they test."""
    signal.signal(signal.SIGINT, signal.default_int_handler)


def make_state(
    name: str,
    *,
    address: str = "10.0.0.1",
    port: int = 8000,
    labels: dict[str, str] | None = None,
    inflight: int = 0,
    metrics: EndpointMetrics | None = None,
) -> EndpointState:
    """An endpoint state as the datastore would hold it; ``metrics`` given means fresh."""
    state = EndpointState(Endpoint(name, address, port, labels=labels or {}), metrics=metrics, stale=metrics is None)
    state.inflight_requests = inflight
    return state


def make_states(count: int) -> list[EndpointState]:
    return [make_state(f"e{i}", address=f"10.0.0.{i + 1}") for i in range(count)]


def make_request(model: str = "m", prompt: bytes = b"hello", **kw: object) -> LLMRequest:
    return LLMRequest(request_id="r1", kind=RequestKind.COMPLETIONS, model=model, prompt_bytes=prompt, **kw)  # type: ignore[arg-type]


async def wait_for(
    predicate: Callable[[], bool | Awaitable[bool]], timeout: float = 10.0, what: str = "condition",
    interval: float = 0.02,
) -> None:
    """Poll until ``predicate()`` (sync or async) holds; fail (not hang) after ``timeout`` seconds.

    The one way tests wait for something to happen: generous by default so a loaded CI box only makes
    the test slower, never red.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        result = predicate()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        await asyncio.sleep(interval)
