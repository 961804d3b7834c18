"""Overload through a real Envoy: past ``--max-concurrent-streams`` clients get a clean 503 OpenAI error.

The first request is held open by its engine (``x-echo-hold``) after its first SSE event, so it is
provably in flight through epp when the second one arrives — no timing involved.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import orjson
import pytest

from epp.demo.echo_engine import HOLD_HEADER
from epp.envoy.stack import LocalGateway
from tests.e2e.harness import Stack, chat, logged, post
from tests.e2e.test_errors import assert_openai_error


@pytest.fixture(scope="module")
def gateway(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalGateway]:
    gw = LocalGateway(stack.engines.upstreams, tmp_path_factory.mktemp("overload"),
                      picker_args=["--max-concurrent-streams", "1", "-v", "3"])
    with gw:
        yield gw


async def metric(gw: LocalGateway, session: aiohttp.ClientSession, name: str) -> float:
    async with session.get(f"http://127.0.0.1:{gw.picker.metrics_port}/metrics") as reply:
        for line in (await reply.text()).splitlines():
            if line.startswith(name + " ") or line.startswith(name + "{"):
                return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} not exported")


async def test_request_past_the_stream_limit_gets_503_and_the_held_one_completes(gateway: LocalGateway) -> None:
    hold = uuid.uuid4().hex
    timeout = aiohttp.ClientTimeout(total=20)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        held_request = chat(stream=True, max_tokens=3)
        async with session.post(gateway.url + "/v1/chat/completions", json=held_request,
                                headers={HOLD_HEADER: hold}) as held:
            assert held.status == 200
            first = await held.content.readuntil(b"\n\n")
            assert await metric(gateway, session, "epp_extproc_streams") == 1

            refused = await post(gateway.envoy, chat())
            error = assert_openai_error(refused, 503)
            assert (error["code"], error["type"]) == ("overloaded", "service_unavailable")
            entry = logged(gateway.envoy, [refused.request_id])[refused.request_id]
            assert entry.upstream is None and entry.details == "epp_overloaded"

            engine = orjson.loads(first.removeprefix(b"data: "))["engine"]
            async with session.post(f"http://127.0.0.1:{engine['port']}/release/{hold}") as released:
                assert released.status == 200
            assert (await held.content.read()).endswith(b"data: [DONE]\n\n")
        assert await metric(gateway, session, "epp_extproc_streams_refused_total") == 1
        assert await metric(gateway, session, "epp_extproc_streams_limit") == 1
        for _ in range(100):  # Envoy ends the held stream just after the client has the last byte
            if await metric(gateway, session, "epp_extproc_streams") == 0:
                break
            await asyncio.sleep(0.05)
    after = await post(gateway.envoy, chat())  # the slot is free again
    assert after.status == 200, after.body
    log = Path(gateway.workdir / "epp.log").read_text()
    assert f"rejected request id={refused.request_id}" in log and "reason=overloaded" in log
