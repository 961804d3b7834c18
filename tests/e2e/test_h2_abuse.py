"""The native HTTP/2 transport (``--grpc-server native``) behind a real Envoy while clients abuse the gateway.

Envoy relays what its downstream clients do to epp's ext_proc connection: a client that opens requests and
resets them at once becomes ext_proc streams Envoy resets (rapid reset laundered through the gateway), a client
that never opens its flow-control window or never reads its socket holds ext_proc streams whose responses do
not move, and a client that says GOAWAY or vanishes mid-stream ends them abruptly. Meanwhile well-behaved
clients keep sending requests. Outcome: every well-behaved request succeeds, epp logs no traceback, holds no
stream afterwards, and serves the next request; then it drains with GOAWAY while responses stream, and they
finish. (The frame-level attacks on epp's port: tests/extproc/h2.)
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import orjson
import pytest

from epp.demo.engines import EngineFleet, start_engines
from epp.envoy.stack import LocalGateway
from epp.extproc.h2 import wire
from tests.e2e.harness import chat, post
from tests.extproc.h2.rawclient import Client

MODEL = "demo-model"
RUN_S = 3.0
HTTP_HEADERS = [(b":method", b"POST"), (b":scheme", b"http"), (b":path", b"/v1/chat/completions"),
                (b":authority", b"127.0.0.1"), (b"content-type", b"application/json")]


def _body(stream: bool, max_tokens: int) -> bytes:
    return orjson.dumps({"model": MODEL, "max_tokens": max_tokens, "stream": stream,
                         "messages": [{"role": "user", "content": "abuse the gateway"}]})


@pytest.fixture(scope="module")
def sims() -> Iterator[EngineFleet]:
    fleet = start_engines(["a", "b"], MODEL)
    try:
        yield fleet
    finally:
        fleet.stop()


async def _h2(port: int, settings: dict[int, int] | None = None) -> Client:
    client = Client(*await asyncio.open_connection("127.0.0.1", port))
    client.send(wire.PREFACE, wire.settings(settings or {}))
    return client


def _request(client: Client, sid: int, body: bytes) -> bytes:
    return (wire.frame(wire.HEADERS, wire.END_HEADERS, sid, client.encoder.encode(HTTP_HEADERS))
            + wire.frame(wire.DATA, wire.END_STREAM, sid, body))


async def _discard(client: Client, seconds: float) -> None:
    """Read (and drop) what Envoy sends for ``seconds`` or until it closes."""
    with contextlib.suppress(TimeoutError, ConnectionError):
        async with asyncio.timeout(seconds):
            while await client.reader.read(65536):
                pass


def _abort(client: Client) -> None:
    client.writer.transport.abort()


async def rapid_reset(port: int, streams: int) -> None:
    """Whole requests, each reset right after it is sent, in bursts: Envoy opens an ext_proc stream for each."""
    client = await _h2(port)
    reading = asyncio.create_task(_discard(client, RUN_S + 2))
    body = _body(False, 4)
    with contextlib.suppress(ConnectionError):
        for first in range(1, 2 * streams, 200):
            client.send(*(_request(client, sid, body) + wire.rst_stream(sid, wire.CANCEL)
                          for sid in range(first, min(first + 200, 2 * streams), 2)))
            await client.writer.drain()
            await asyncio.sleep(0.02)
    await asyncio.sleep(0.5)
    reading.cancel()
    _abort(client)


async def shut_window(port: int) -> None:
    """Streamed chats on a connection whose stream windows are 0 and never opened: nothing of the responses
    can reach the client; it vanishes at the end."""
    client = await _h2(port, {wire.SETTINGS_INITIAL_WINDOW_SIZE: 0})
    client.send(*(_request(client, sid, _body(True, 200)) for sid in range(1, 21, 2)))
    await asyncio.sleep(RUN_S)
    _abort(client)


async def never_reads(port: int) -> None:
    """HTTP/1.1 streamed chats whose client never reads its socket."""
    writers = []
    for _ in range(5):
        _, writer = await asyncio.open_connection("127.0.0.1", port)
        body = _body(True, 2000)
        writer.write(b"POST /v1/chat/completions HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\n"
                     b"content-length: %d\r\n\r\n%s" % (len(body), body))
        writers.append(writer)
    await asyncio.sleep(RUN_S)
    for writer in writers:
        writer.transport.abort()


async def goaway_mid_stream(port: int) -> None:
    """Streamed chats, then the client's GOAWAY while they stream, then it vanishes."""
    for _ in range(3):
        client = await _h2(port)
        client.send(*(_request(client, sid, _body(True, 200)) for sid in range(1, 11, 2)))
        await client.until(wire.DATA)  # the responses are streaming
        client.send(wire.goaway(9, wire.NO_ERROR))
        await _discard(client, 0.3)
        _abort(client)


async def well_behaved(url: str, until: float) -> list[int]:
    statuses: list[int] = []
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=20)) as session:

        async def one_client() -> None:
            while time.monotonic() < until and len(statuses) < 2000:
                async with session.post(url + "/v1/chat/completions", data=_body(False, 8),
                                        headers={"content-type": "application/json"}) as reply:
                    await reply.read()
                    statuses.append(reply.status)

        await asyncio.gather(*(one_client() for _ in range(4)))
    return statuses


async def test_native_picker_behind_envoy_survives_abusive_clients_then_drains_streams(sims: EngineFleet,
                                                                                       tmp_path: Path) -> None:
    """Then SIGTERM while streamed responses pass through epp: its GOAWAY stops new ext_proc streams on Envoy's
    connection, and the open ones (each request's response stream) finish whole."""
    with LocalGateway(sims.upstreams, tmp_path, picker_args=["--grpc-server", "native", "--enable-grpc-stream-metrics"]) as gateway:
        port = urllib.parse.urlsplit(gateway.url).port
        assert port is not None
        until = time.monotonic() + RUN_S
        statuses, *_ = await asyncio.gather(
            well_behaved(gateway.url, until),
            rapid_reset(port, 1500), rapid_reset(port, 1500),
            shut_window(port), never_reads(port), goaway_mid_stream(port),
        )
        assert len(statuses) > 20 and set(statuses) == {200}, statuses
        after = await post(gateway.envoy, chat(MODEL, "after the abuse", max_tokens=4))
        assert after.status == 200, after.body[:200]
        metrics_url = f"http://127.0.0.1:{gateway.picker.metrics_port}/metrics"
        open_streams = -1.0
        async with aiohttp.ClientSession() as session:
            for _ in range(50):  # every abusive stream has ended; epp must have let go of all of them
                async with session.get(metrics_url) as reply:
                    metrics = await reply.text()
                open_streams = next(float(line.split()[-1]) for line in metrics.splitlines()
                                    if line.startswith("epp_extproc_streams "))
                if open_streams == 0:
                    break
                await asyncio.sleep(0.1)
        assert open_streams == 0
        cancelled = sum(float(line.split()[-1]) for line in metrics.splitlines()
                        if line.startswith('llm_d_epp_extproc_streams_total{code="Canceled"}'))
        assert cancelled >= 100, cancelled  # the abuse reached epp: Envoy reset that many ext_proc streams

        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:

            async def streamed() -> tuple[int, bytes, float]:
                async with session.post(gateway.url + "/v1/chat/completions", data=_body(True, 300),
                                        headers={"content-type": "application/json"}) as reply:
                    first = await reply.content.readany()
                    rest = await reply.read()
                    return reply.status, first + rest, time.monotonic()

            running = [asyncio.create_task(streamed()) for _ in range(4)]
            await asyncio.sleep(0.3)  # the responses are streaming (300 tokens take the simulator seconds)
            stopped_at = time.monotonic()
            exit_code = await asyncio.to_thread(gateway.picker.stop, 20.0)
            results = await asyncio.gather(*running)
        assert exit_code == 0
        for status, body, ended in results:
            assert status == 200 and body.rstrip().endswith(b"data: [DONE]"), body[-200:]
            assert ended > stopped_at + 0.2  # it was still streaming well after epp was told to stop
    log = (tmp_path / "epp.log").read_text()
    assert "no longer accepting streams" in log
    assert "Traceback" not in log and "internal error" not in log, log[-3000:]

