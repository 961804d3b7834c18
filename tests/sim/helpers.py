"""Client helpers for the sim tests: requests, SSE parsing, metric scraping."""

from __future__ import annotations

from typing import Any

import aiohttp
import orjson
from prometheus_client.parser import text_string_to_metric_families

MODEL = "meta-llama/Llama-3.1-8B-Instruct"


async def post(session: aiohttp.ClientSession, url: str, body: Any) -> tuple[int, Any]:
    async with session.post(url, data=orjson.dumps(body) if not isinstance(body, bytes) else body) as resp:
        return resp.status, orjson.loads(await resp.read())


async def sse(session: aiohttp.ClientSession, url: str, body: Any) -> list[Any]:
    """The ``data:`` payloads of a streamed response, ``[DONE]`` kept as the string."""
    async with session.post(url, data=orjson.dumps(body)) as resp:
        assert resp.status == 200 and resp.headers["Content-Type"].startswith("text/event-stream")
        raw = (await resp.read()).decode()
    events = raw.split("\n\n")
    assert events[-1] == "", "stream must end with a blank line"
    out: list[Any] = []
    for event in events[:-1]:
        assert event.startswith("data: "), event
        data = event[len("data: ") :]
        out.append(data if data == "[DONE]" else orjson.loads(data))
    return out


async def scrape(session: aiohttp.ClientSession, base: str) -> dict[str, float]:
    """Samples by name (labels dropped; every family here has one series per name)."""
    async with session.get(f"{base}/metrics") as resp:
        text = await resp.text()
    return {
        s.name: s.value for fam in text_string_to_metric_families(text) for s in fam.samples if not s.labels.get("le")
    }
