"""The demo's sample traffic and the client that sends it through the gateway.

A few chat and completion requests, three that share a long system prompt (the case prefix-aware routing
exists for), one streamed answer, and a small burst sent while the stream is still running so the
picker has to choose among busy and idle engines. Every request carries its own ``x-request-id`` so its
line in Envoy's access log can be found, and its send and finish times so the report can tell how busy
each engine was when epp picked.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson

from epp.demo.echo_engine import DELAY_HEADER

MODEL = "demo-model"
SYSTEM_PROMPT = (
    "You are the support assistant of a company that runs inference clusters. Answer precisely. " * 80
).strip()


@dataclass
class DemoRequest:
    """One sample request: what is sent and what it is meant to show."""

    label: str
    path: str
    payload: dict[str, Any]
    prefix_group: str | None = None
    headers: dict[str, str] = field(default_factory=dict)
    request_id: str = field(default_factory=lambda: str(uuid.uuid4()))

    @property
    def streamed(self) -> bool:
        return bool(self.payload.get("stream"))


@dataclass
class Outcome:
    """What the client saw: status, timings (monotonic seconds), first SSE event time for streams."""

    request: DemoRequest
    status: int
    sent_at: float
    done_at: float
    first_event_at: float | None = None
    cached_tokens: int | None = None
    error: str | None = None

    @property
    def latency_ms(self) -> float:
        return (self.done_at - self.sent_at) * 1000


def _chat(content: str, system: str | None = None, **extra: Any) -> dict[str, Any]:
    messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": content}]
    return {"model": MODEL, "messages": messages, "max_tokens": 8, **extra}


def opening_requests() -> list[DemoRequest]:
    """Sent one after another on an idle pool."""
    shared = [
        DemoRequest(f"chat + shared {len(SYSTEM_PROMPT) // 1024} KB system prompt: {q}", "/v1/chat/completions",
                    _chat(q, SYSTEM_PROMPT), prefix_group="support")
        for q in ("How do I drain a node?", "What does a 429 mean?", "Why is my TTFT high?")
    ]  # fmt: skip
    return [
        DemoRequest("chat: capital of France?", "/v1/chat/completions", _chat("What is the capital of France?")),
        DemoRequest("completion: haiku", "/v1/completions",
                    {"model": MODEL, "prompt": "Write a haiku about load balancers.", "max_tokens": 8}),
        *shared,
    ]


def stream_request(delay_ms: int = 250) -> DemoRequest:
    """A long streamed chat; echo engines space its events ``delay_ms`` apart, epp sim at its own pace."""
    return DemoRequest("chat, streamed (SSE)", "/v1/chat/completions",
                       _chat("Tell me a story.", stream=True, max_tokens=48), headers={DELAY_HEADER: str(delay_ms)})


def burst_requests(delay_ms: int = 100) -> list[DemoRequest]:
    """Sent together while the stream is still running; each takes a few ``delay_ms`` tokens to answer."""
    slow = {DELAY_HEADER: str(delay_ms)}
    return [
        DemoRequest(f"chat during the stream ({i})", "/v1/chat/completions", _chat(f"Quick question {i}"), headers=slow)
        for i in range(1, 4)
    ] + [DemoRequest("completion during the stream", "/v1/completions",
                     {"model": MODEL, "prompt": "Say hi.", "max_tokens": 4}, headers=slow)]  # fmt: skip


def _cached_tokens(body: bytes) -> int | None:
    """``usage.prompt_tokens_details.cached_tokens`` of an OpenAI answer, if the engine reports it."""
    try:
        usage = orjson.loads(body).get("usage") or {}
        return int((usage.get("prompt_tokens_details") or {})["cached_tokens"])
    except (orjson.JSONDecodeError, AttributeError, KeyError, TypeError, ValueError):
        return None


class DemoClient:
    """Sends ``DemoRequest``s to the gateway and records ``Outcome``s in sending order."""

    def __init__(self, session: aiohttp.ClientSession, base_url: str) -> None:
        self.session = session
        self.base_url = base_url
        self.outcomes: list[Outcome] = []

    async def send(self, request: DemoRequest, first_event: asyncio.Event | None = None) -> Outcome:
        headers = {"content-type": "application/json", "x-request-id": request.request_id} | request.headers
        outcome = Outcome(request, 0, time.monotonic(), 0.0)
        self.outcomes.append(outcome)
        try:
            async with self.session.post(self.base_url + request.path, data=orjson.dumps(request.payload),
                                         headers=headers) as reply:  # fmt: skip
                outcome.status = reply.status
                if request.streamed and reply.status == 200:
                    async for _line in reply.content:
                        if outcome.first_event_at is None:
                            outcome.first_event_at = time.monotonic()
                            if first_event is not None:
                                first_event.set()
                else:
                    outcome.cached_tokens = _cached_tokens(await reply.read())
        except aiohttp.ClientError as exc:
            outcome.error = f"{type(exc).__name__}: {exc}"
        finally:
            outcome.done_at = time.monotonic()
            if first_event is not None:
                first_event.set()
        return outcome

    async def run_sample(self) -> list[Outcome]:
        """Openers one by one, then a stream, and once its first event is in, a burst 20 ms apart."""
        for request in opening_requests():
            await self.send(request)
        started = asyncio.Event()
        stream = asyncio.create_task(self.send(stream_request(), started))
        await started.wait()
        burst = []
        for request in burst_requests():
            burst.append(asyncio.create_task(self.send(request)))
            await asyncio.sleep(0.02)
        await asyncio.gather(*burst, stream)
        return self.outcomes
