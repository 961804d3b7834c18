"""Mixed OpenAI traffic for the soak, and how each request ended.

Requests are chat or completions, streamed or not, with prompts from 1 KB to 220 KB (log-uniform, so
most are small and some are huge) sharing a few long prefixes (prefix-cache scoring has work to do),
plus a share of malformed ones that must be refused with their 4xx. Sending is paced at ``rate`` per
second with at most ``max_inflight`` outstanding; a tick with no room is counted, not queued, so the
client itself never grows without bound.
"""

from __future__ import annotations

import asyncio
import math
import random
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field

import aiohttp
import orjson

from epp.soak.engines import MODEL

MIN_PROMPT, MAX_PROMPT = 1_000, 220_000
WORDS = tuple("the quick brown fox jumps over lazy dogs while seven wizards quietly vex jumbo kings".split())
# kind → (body, expected status)
MALFORMED: dict[str, tuple[bytes, int]] = {
    "bad-json": (b'{"model": "' + MODEL.encode() + b'", "messages": [{"role": "user", "content": "x"', 400),
    "no-model": (b'{"messages": [{"role": "user", "content": "hello"}]}', 400),
    "deep-nesting": (b'{"model": "m", "messages": ' + b"[" * 400 + b"]" * 400 + b"}", 400),
}
TOO_LARGE = "too-large"  # body built per run: just past the picker's --max-body-bytes, expected 413


@dataclass(frozen=True, slots=True)
class Shape:
    path: str
    stream: bool
    prompt_bytes: int
    malformed: str | None = None


@dataclass(slots=True)
class Outcome:
    """One request: when it ran (seconds since the run began), through which gateway, and how it ended."""

    request_id: str
    gateway: str
    shape: Shape
    start: float
    end: float = 0.0
    status: int = 0
    cause: str | None = None  # None = success (including an expected refusal of a malformed request)

    @property
    def ok(self) -> bool:
        return self.cause is None


@dataclass
class TrafficStats:
    outcomes: list[Outcome] = field(default_factory=list)
    skipped: int = 0  # ticks with max_inflight requests already outstanding


class RequestMix:
    """Seeded request shapes and bodies."""

    def __init__(self, rng: random.Random, malformed_share: float, max_body_bytes: int) -> None:
        self.rng = rng
        self.malformed_share = malformed_share
        self.max_body_bytes = max_body_bytes
        self.prefixes = [self._words(MAX_PROMPT // 2) for _ in range(4)]

    def _words(self, size: int) -> str:
        return " ".join(self.rng.choices(WORDS, k=size // 5 + 1))[:size]

    def shape(self) -> Shape:
        if self.rng.random() < self.malformed_share:
            kind = self.rng.choice([*MALFORMED, TOO_LARGE])
            return Shape("/v1/chat/completions", False, 0, kind)
        size = int(math.exp(self.rng.uniform(math.log(MIN_PROMPT), math.log(MAX_PROMPT))))
        path = self.rng.choice(["/v1/chat/completions", "/v1/completions"])
        return Shape(path, self.rng.random() < 0.5, size)

    def body(self, shape: Shape) -> tuple[bytes, int]:
        """(request body, expected status)."""
        if shape.malformed == TOO_LARGE:
            return b'{"model": "' + MODEL.encode() + b'", "prompt": "' + b"x" * self.max_body_bytes + b'"}', 413
        if shape.malformed is not None:
            return MALFORMED[shape.malformed]
        prefix = self.rng.choice(self.prefixes)[: shape.prompt_bytes // 2]
        text = prefix + self._words(shape.prompt_bytes - len(prefix))
        payload: dict[str, object] = {"model": MODEL, "max_tokens": self.rng.randint(4, 24), "stream": shape.stream}
        if shape.path.endswith("chat/completions"):
            payload["messages"] = [{"role": "user", "content": text}]
        else:
            payload["prompt"] = text
        return orjson.dumps(payload), 200


async def send(session: aiohttp.ClientSession, url: str, gateway: str, mix: RequestMix, t0: float) -> Outcome:
    shape = mix.shape()
    body, expected = mix.body(shape)
    outcome = Outcome(uuid.uuid4().hex, gateway, shape, time.monotonic() - t0)
    headers = {"content-type": "application/json", "x-request-id": outcome.request_id}
    try:
        async with session.post(url + shape.path, data=body, headers=headers) as reply:
            outcome.status = reply.status
            data = await reply.read()
        outcome.cause = _judge(shape, expected, reply.status, data)
    except TimeoutError:
        outcome.cause = "client-timeout"
    except aiohttp.ClientError as exc:
        outcome.cause = f"connection:{type(exc).__name__}"
    outcome.end = time.monotonic() - t0
    return outcome


async def probe(session: aiohttp.ClientSession, url: str, gateway: str, max_tokens: int, t0: float,
                streaming: asyncio.Event) -> Outcome:
    """A long streamed request; ``streaming`` is set once its first bytes arrived (it is in flight)."""
    shape = Shape("/v1/completions", True, MIN_PROMPT, None)
    payload = {"model": MODEL, "prompt": "drain " * (MIN_PROMPT // 6), "max_tokens": max_tokens, "stream": True}
    outcome = Outcome(uuid.uuid4().hex, gateway, shape, time.monotonic() - t0)
    headers = {"x-request-id": outcome.request_id}
    data = b""
    try:
        async with session.post(url + shape.path, json=payload, headers=headers) as reply:
            outcome.status = reply.status
            async for chunk in reply.content.iter_any():
                streaming.set()
                data += chunk
        outcome.cause = _judge(shape, 200, reply.status, data)
    except TimeoutError:
        outcome.cause = "client-timeout"
    except aiohttp.ClientError as exc:
        outcome.cause = f"connection:{type(exc).__name__}"
    finally:
        streaming.set()  # never leave the caller waiting on a request that failed early
    outcome.end = time.monotonic() - t0
    return outcome


def _judge(shape: Shape, expected: int, status: int, data: bytes) -> str | None:
    if status != expected:
        return f"http-{status}"
    if expected != 200:
        try:
            orjson.loads(data)["error"]["message"]
        except (orjson.JSONDecodeError, KeyError, TypeError):
            return "refusal-not-openai-json"
        return None
    if shape.stream:
        return None if data.rstrip().endswith(b"data: [DONE]") else "incomplete-stream"
    try:
        orjson.loads(data)["choices"]
    except (orjson.JSONDecodeError, KeyError, TypeError):
        return "bad-response-body"
    return None


async def drive(
    gateways: Sequence[tuple[str, str]], mix: RequestMix, rate: float, duration: float, max_inflight: int, t0: float,
) -> TrafficStats:
    """Send paced requests round-robin over ``gateways`` ((name, url) pairs) until ``duration`` has passed."""
    stats = TrafficStats()
    pending: set[asyncio.Task[Outcome]] = set()
    timeout = aiohttp.ClientTimeout(total=60)

    def done(task: asyncio.Task[Outcome]) -> None:
        pending.discard(task)
        stats.outcomes.append(task.result())

    async with aiohttp.ClientSession(timeout=timeout, connector=aiohttp.TCPConnector(limit=max_inflight)) as session:
        tick = 0
        while (now := time.monotonic() - t0) < duration:
            if len(pending) < max_inflight:
                name, url = gateways[tick % len(gateways)]
                task = asyncio.create_task(send(session, url, name, mix, t0))
                pending.add(task)
                task.add_done_callback(done)
            else:
                stats.skipped += 1
            tick += 1
            await asyncio.sleep(max(0.0, tick / rate - now))
        if pending:
            await asyncio.wait(pending)
    return stats
