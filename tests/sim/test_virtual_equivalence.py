"""The HTTP simulator and the virtual-time core give the same TTFTs for the same arrivals.

Tolerance: each request's TTFT within 10 % + 50 ms, the sum within 5 %. The HTTP side adds client and
event-loop latency (measured: ~3 ms on a quiet box) and its arrival times are what the client measured,
not what the server saw; real time (``--time-scale 1``) keeps that jitter from being magnified into
engine time, and 50 ms leaves room for a loaded 2-core CI machine. The prefix-hit count must match exactly.
"""

from __future__ import annotations

import asyncio
import random
import time

import aiohttp
import orjson

from epp.engine.config import EngineConfig
from epp.engine.core import EngineCore
from epp.engine.driver import run_virtual
from epp.engine.request import EngineRequest
from tests.sim.conftest import run_sim
from tests.sim.helpers import MODEL, scrape

SCALE = 1.0
OFFSETS = (0.0, 0.03, 0.06, 0.2, 0.25, 0.4, 0.45, 0.7)  # wall seconds


def _prompts() -> list[list[int]]:
    rng = random.Random(11)
    shared = [rng.randrange(1 << 31) for _ in range(2048)]
    out = []
    for i in range(len(OFFSETS)):
        head = shared if i % 2 else shared[:512]
        out.append(head + [rng.randrange(1 << 31) for _ in range(rng.randrange(200, 3000))])
    return out


async def _send(
    session: aiohttp.ClientSession, url: str, prompt: list[int], delay: float, t0: float
) -> tuple[float, float]:
    await asyncio.sleep(delay)
    body = {"model": MODEL, "prompt": prompt, "max_tokens": 20, "stream": True}
    sent = time.monotonic()
    async with session.post(f"{url}/v1/completions", data=orjson.dumps(body)) as resp:
        assert resp.status == 200
        await resp.content.readuntil(b"\n\n")
        first = time.monotonic()
        await resp.read()
    return sent - t0, first - sent


async def test_http_ttft_matches_virtual_time() -> None:
    prompts = _prompts()
    with run_sim("--time-scale", str(SCALE), "--kv-cache-blocks", "2000") as sim:
        async with aiohttp.ClientSession() as s:
            t0 = time.monotonic()
            results = await asyncio.gather(
                *(_send(s, sim.url, p, d, t0) for p, d in zip(prompts, OFFSETS, strict=True))
            )
            metrics = await scrape(s, sim.url)
    core = EngineCore(EngineConfig(num_gpu_blocks=2000))
    requests = [
        EngineRequest(f"r{i}", p, 20, sent / SCALE)
        for i, (p, (sent, _)) in enumerate(zip(prompts, results, strict=True))
    ]
    virtual = {c.request_id: c.ttft for c in run_virtual(core, requests)}
    http = {f"r{i}": ttft / SCALE for i, (_, ttft) in enumerate(results)}
    for rid, expected in virtual.items():
        assert abs(http[rid] - expected) <= 0.1 * expected + 0.05, (rid, http[rid], expected)
    assert core.stats().prefix_cache_hits == metrics["vllm:prefix_cache_hits_total"]
    assert abs(metrics["vllm:time_to_first_token_seconds_sum"] - sum(virtual.values())) <= 0.05 * sum(virtual.values())
    assert max(virtual.values()) > 2 * min(virtual.values())  # the workload has queueing and cache hits to get right
