"""Shared fixtures and builders."""

from __future__ import annotations


from epp.datastore import Endpoint, EndpointMetrics, EndpointState
from epp.request import LLMRequest, RequestKind


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
