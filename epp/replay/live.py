"""Live replay: the trace through real processes on 127.0.0.1 — ``epp sim`` engines, ``epp serve`` with
the policy, and a real Envoy in front — to check that offline numbers hold end to end.

Requests go to Envoy as ``/v1/completions`` with the prompt as token ids (no tokenizer round trip can
shift block boundaries), streamed, at their trace arrival times compressed by ``time_scale`` (wall
seconds per simulated second; the engines run at the same scale). Times are measured on the client and
divided by ``time_scale``, so they compare with offline virtual seconds. Cached tokens come from each
response's ``usage``; which engine served how many requests, and the load over time, from the engines'
own ``/metrics``. Compressing time below what the CPU can keep up with inflates latencies.

``run_live_via`` is the same replay through any router in front of the engines (``bench/peers.py``
puts the peer routers there), optionally with the prompts rendered another way (as text, for routers
that only accept text prompts).
"""

from __future__ import annotations

import asyncio
import re
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import aiohttp
import orjson

from epp.demo.engines import EngineFleet, start_engines
from epp.envoy.stack import LocalGateway
from epp.replay.offline import ClusterSpec, LoadSample, RequestRecord, RunResult
from epp.replay.policies import DEFAULT
from epp.replay.traces.model import TraceRequest

LOAD_POLL_SECONDS = 0.25
Front = Callable[[EngineFleet, Path], AbstractContextManager[str]]
"""Starts a router in front of the engines (its logs under the path), yields its base URL, stops it."""

PromptRenderer = Callable[[TraceRequest], str | Sequence[int]]
"""The ``prompt`` field a request is sent with."""


def token_prompt(request: TraceRequest) -> list[int]:
    """The prompt as token ids: no tokenizer round trip can shift block boundaries."""
    return request.prompt.tokens()


_GAUGE = re.compile(rb"^vllm:(num_requests_running|num_requests_waiting|request_success_total)\{[^}]*\} (\S+)$", re.MULTILINE)


@dataclass(frozen=True, slots=True)
class LiveSpec:
    """How to run live: wall seconds per simulated second, and where processes keep their logs."""

    time_scale: float = 1.0
    workdir: Path | None = None


def _engine_counts(text: bytes) -> tuple[int, int]:
    """(running + waiting, finished requests) from one ``epp sim`` metrics page."""
    load = done = 0.0
    for name, value in _GAUGE.findall(text):
        if name == b"request_success_total":
            done += float(value)
        else:
            load += float(value)
    return int(load), int(done)


class _Client:
    def __init__(self, url: str, model: str, spec: LiveSpec, fleet: EngineFleet, prompt: PromptRenderer) -> None:
        self.url = url
        self.model = model
        self.prompt = prompt
        self.scale = spec.time_scale
        self.fleet = fleet
        self.t0 = 0.0
        self.load: list[LoadSample] = []

    def now(self) -> float:
        """Simulated seconds since the replay started."""
        return (time.monotonic() - self.t0) / self.scale

    async def send(self, session: aiohttp.ClientSession, request: TraceRequest, record: RequestRecord) -> None:
        body = {
            "model": self.model,
            "prompt": self.prompt(request),
            "max_tokens": request.output_tokens,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        async with session.post(f"{self.url}/v1/completions", data=orjson.dumps(body),
                                headers={"content-type": "application/json"}) as response:  # fmt: skip
            if response.status != 200:
                record.shed = f"HTTP {response.status}"
                await response.read()
                return
            async for line in response.content:
                if not line.startswith(b"data: ") or line.startswith(b"data: [DONE]"):
                    continue
                chunk = orjson.loads(line[6:])
                if chunk.get("choices") and record.first_token is None:
                    record.first_token = self.now()
                usage = chunk.get("usage")
                if usage:
                    record.cached_tokens = usage["prompt_tokens_details"]["cached_tokens"]
                    record.output_tokens = usage["completion_tokens"]
            record.finish = self.now()

    async def scrape(self, session: aiohttp.ClientSession) -> list[tuple[int, int]]:
        pages = []
        for upstream in self.fleet.upstreams:
            async with session.get(f"http://{upstream.hostport}/metrics") as response:
                pages.append(_engine_counts(await response.read()))
        return pages

    async def watch(self, session: aiohttp.ClientSession) -> None:
        while True:
            counts = await self.scrape(session)
            self.load.append(LoadSample(self.now(), tuple(load for load, _ in counts)))
            await asyncio.sleep(LOAD_POLL_SECONDS)

    async def replay(self, requests: list[TraceRequest], rate_scale: float) -> tuple[list[RequestRecord], tuple[int, ...]]:
        records = [RequestRecord(r.arrival / rate_scale, r.prompt.length, r.priority) for r in requests]
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
            before = [done for _, done in await self.scrape(session)]
            self.t0 = time.monotonic()
            watcher = asyncio.create_task(self.watch(session))
            sends = []
            for request, record in zip(requests, records):
                delay = record.arrival * self.scale - (time.monotonic() - self.t0)
                if delay > 0:
                    await asyncio.sleep(delay)
                sends.append(asyncio.create_task(self.send(session, request, record)))
            results = await asyncio.gather(*sends, return_exceptions=True)
            watcher.cancel()
            for record, result in zip(records, results):
                if isinstance(result, Exception):
                    record.shed = f"client error: {result!r}"
            after = [done for _, done in await self.scrape(session)]
        return records, tuple(a - b for a, b in zip(after, before))


@contextmanager
def _gateway(picker_args: Sequence[str], fleet: EngineFleet, workdir: Path) -> Iterator[str]:
    with LocalGateway(fleet.upstreams, workdir, picker_args=picker_args) as gateway:
        yield gateway.url


def run_live(
    requests: list[TraceRequest], policy: str, cluster: ClusterSpec, rate_scale: float, spec: LiveSpec
) -> RunResult:
    """Start the engines, ``epp serve`` with ``policy`` and Envoy, replay, stop everything (by PID).

    ``policy`` is what ``--policy`` takes: ``default`` runs ``epp serve`` without a config, anything
    else is its ``--config-file`` (a preset name or a YAML path).
    """
    picker_args = [] if policy == DEFAULT else ["--config-file", policy]
    return run_live_via(requests, partial(_gateway, picker_args), cluster, rate_scale, spec)


def run_live_via(
    requests: list[TraceRequest],
    front: Front,
    cluster: ClusterSpec,
    rate_scale: float,
    spec: LiveSpec,
    prompt: PromptRenderer = token_prompt,
) -> RunResult:
    """Start fresh engines (cold caches), ``front`` over them, replay through its URL, stop everything."""
    started = time.perf_counter()
    engine = cluster.engine
    # usage.prompt_tokens_details.cached_tokens (each record's cache hit) needs vLLM's flag, as with a real vLLM;
    # each engine's --profile comes with its own arguments below (a mix is one profile per engine)
    sim_args = ["--time-scale", str(spec.time_scale), "--enable-prompt-tokens-details"]
    if engine.num_gpu_blocks is not None:
        sim_args += ["--kv-cache-blocks", str(engine.num_gpu_blocks)]
    names = [f"engine-{i}" for i in range(cluster.engines)]
    with tempfile.TemporaryDirectory(prefix="epp-replay-live-") as tmp:
        workdir = spec.workdir or Path(tmp)
        profiles = [["--profile", cluster.engine_config(i).profile] for i in range(cluster.engines)]
        fleet = start_engines(names, engine.model, extra_args=sim_args, engine_args=profiles)
        try:
            with front(fleet, workdir) as url:
                client = _Client(url, engine.model, spec, fleet, prompt)
                records, dispatched = asyncio.run(client.replay(requests, rate_scale))
        finally:
            fleet.stop()
    return RunResult(records, client.load, dispatched, time.perf_counter() - started)
