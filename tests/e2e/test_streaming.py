"""SSE from the engine passes through Envoy and epp intact and unbuffered (reference duplex response mode)."""

from __future__ import annotations

import uuid

import aiohttp
import orjson
import pytest

from epp.demo.echo_engine import HOLD_HEADER
from tests.e2e.harness import Stack, chat, logged

TOKENS = 5


@pytest.mark.parametrize("variant", ["duplex", "tls"])
async def test_sse_events_arrive_before_the_stream_ends(stack: Stack, variant: str) -> None:
    """The engine holds the stream after its first event until we release it directly (not via Envoy):
    seeing that event first proves nothing on the way buffers; a buffering hop would time out here."""
    envoy = stack.envoy(variant)
    hold, request_id = uuid.uuid4().hex, str(uuid.uuid4())
    payload = chat(stream=True, max_tokens=TOKENS, stream_options={"include_usage": True})
    headers = {HOLD_HEADER: hold, "x-request-id": request_id}
    timeout = aiohttp.ClientTimeout(total=20)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        async with session.post(envoy.url + "/v1/chat/completions", json=payload, headers=headers) as reply:
            assert reply.status == 200
            assert reply.headers["content-type"].startswith("text/event-stream")
            first = await reply.content.readuntil(b"\n\n")
            served = orjson.loads(first.removeprefix(b"data: "))["engine"]
            engine_url = f"http://127.0.0.1:{served['port']}"
            async with session.post(f"{engine_url}/release/{hold}") as released:
                assert released.status == 200
            rest = await reply.content.read()
    events = [e.removeprefix(b"data: ") for e in (first + rest).split(b"\n\n") if e]
    assert events[-1] == b"[DONE]"
    chunks = [orjson.loads(e) for e in events[:-1]]
    assert [c["choices"][0]["delta"]["content"] for c in chunks[:TOKENS]] == [f"t{i} " for i in range(TOKENS)]
    assert chunks[TOKENS]["usage"]["completion_tokens"] == TOKENS
    served_at = f"127.0.0.1:{served['port']}"
    assert served["headers"]["x-gateway-destination-endpoint"] == served_at
    assert logged(envoy, [request_id])[request_id].upstream == served_at
