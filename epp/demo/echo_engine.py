"""A tiny OpenAI-compatible engine that says who it is: the stand-in model server for the demo and e2e tests.

Each engine answers ``/v1/completions`` and ``/v1/chat/completions`` (JSON or SSE), ``/v1/models``,
``/health`` and a minimal vLLM-style ``/metrics``. Replies carry what a routing test needs to check:
``engine.name`` (who served), ``engine.headers`` (the request headers as received, so the test can see
what Envoy and epp added) and ``engine.body_bytes``, plus an OpenAI ``usage`` object. The client controls
the reply with ``max_tokens`` (number of tokens/SSE events, ≤ 64), the ``x-echo-delay-ms`` header (time per
generated token after the first, ≤ 2000 ms: the pause between SSE events, or before a JSON answer) and the ``x-echo-hold`` header: the stream stops after its first event until
someone calls ``POST /release/<hold value>`` on this engine — proof without timing that a proxy in between
passes events on as they come (a buffering proxy never shows the first event before the release).

Run ``python -m epp.demo.echo_engine --name a --name b`` to host several engines in one process; it binds
free ports on 127.0.0.1 and prints ``{"a": port, "b": port}`` as one JSON line once all are listening.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import itertools
import signal
import sys
import time
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web

MAX_TOKENS = 64
MAX_DELAY_MS = 2000
DELAY_HEADER = "x-echo-delay-ms"
HOLD_HEADER = "x-echo-hold"
HOLD_TIMEOUT_S = 30.0


@dataclass
class EngineState:
    """Identity and live counters of one engine (what ``/metrics`` reports)."""

    name: str
    port: int = 0
    running: int = 0
    served: int = 0
    ids: itertools.count[int] = field(default_factory=itertools.count)
    holds: dict[str, asyncio.Event] = field(default_factory=dict)

    def hold(self, key: str) -> asyncio.Event:
        return self.holds.setdefault(key, asyncio.Event())


ENGINE_KEY = web.AppKey("engine", EngineState)


def _error(status: int, message: str) -> web.Response:
    body = {"error": {"message": message, "type": "invalid_request_error", "param": None, "code": None}}
    return web.json_response(body, status=status, dumps=lambda o: orjson.dumps(o).decode())


def _int_in(value: Any, default: int, upper: int) -> int:
    try:
        return max(0, min(int(value), upper))
    except (TypeError, ValueError):
        return default


def _completion(state: EngineState, request: web.Request, body: dict[str, Any], raw: bytes) -> dict[str, Any]:
    raw_len, digest = len(raw), hashlib.sha256(raw).hexdigest()
    chat = request.path.endswith("/chat/completions")
    tokens = _int_in(body.get("max_tokens"), 4, MAX_TOKENS)
    prompt_tokens = (raw_len + 3) // 4
    return {
        "id": f"cmpl-{state.name}-{next(state.ids)}",
        "object": "chat.completion" if chat else "text_completion",
        "created": int(time.time()),
        "model": body.get("model"),
        "chat": chat,
        "tokens": tokens,
        "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": tokens, "total_tokens": prompt_tokens + tokens},
        "engine": {
            "name": state.name,
            "port": state.port,
            "headers": {k.lower(): v for k, v in request.headers.items()},
            "body_bytes": raw_len,
            "body_sha256": digest,
        },
    }


def _choice(chat: bool, text: str, finish: str | None, *, delta: bool) -> dict[str, Any]:
    if not chat:
        return {"index": 0, "text": text, "finish_reason": finish}
    key = "delta" if delta else "message"
    return {"index": 0, key: {"role": "assistant", "content": text}, "finish_reason": finish}


async def _stream(
    request: web.Request, reply: dict[str, Any], delay_s: float, include_usage: bool
) -> web.StreamResponse:
    chat, tokens = reply.pop("chat"), reply.pop("tokens")
    usage, engine = reply.pop("usage"), reply.pop("engine")
    stream = web.StreamResponse(headers={"content-type": "text/event-stream", "cache-control": "no-cache"})
    await stream.prepare(request)
    reply["object"] = "chat.completion.chunk" if chat else "text_completion"
    for index in range(tokens):
        finish = "length" if index == tokens - 1 else None
        event = reply | {"choices": [_choice(chat, f"t{index} ", finish, delta=True)]}
        if index == 0:
            event["engine"] = engine
        await stream.write(b"data: " + orjson.dumps(event) + b"\n\n")
        if index == 0 and HOLD_HEADER in request.headers:
            state = request.app[ENGINE_KEY]
            key = request.headers[HOLD_HEADER]
            try:
                await asyncio.wait_for(state.hold(key).wait(), HOLD_TIMEOUT_S)
            finally:
                state.holds.pop(key, None)
        if delay_s and index < tokens - 1:
            await asyncio.sleep(delay_s)
    if include_usage:
        await stream.write(b"data: " + orjson.dumps(reply | {"choices": [], "usage": usage}) + b"\n\n")
    await stream.write(b"data: [DONE]\n\n")
    await stream.write_eof()
    return stream


async def completions(request: web.Request) -> web.StreamResponse:
    state = request.app[ENGINE_KEY]
    raw = await request.read()
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return _error(400, "request body is not JSON")
    if not isinstance(body, dict):
        return _error(400, "request body must be a JSON object")
    state.running += 1
    try:
        reply = _completion(state, request, body, raw)
        delay_s = _int_in(request.headers.get(DELAY_HEADER), 0, MAX_DELAY_MS) / 1000
        if body.get("stream"):
            include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
            return await _stream(request, reply, delay_s, include_usage)
        chat, tokens = reply.pop("chat"), reply.pop("tokens")
        await asyncio.sleep(delay_s * max(0, tokens - 1))
        text = "".join(f"t{i} " for i in range(tokens))
        reply["choices"] = [_choice(chat, text, "length", delta=False)]
        return web.json_response(reply, dumps=lambda o: orjson.dumps(o).decode())
    finally:
        state.running -= 1
        state.served += 1


async def release(request: web.Request) -> web.Response:
    """Let a held stream (``x-echo-hold``) continue; releasing before the stream reaches the hold also works."""
    request.app[ENGINE_KEY].hold(request.match_info["key"]).set()
    return web.Response(text="released")


async def models(request: web.Request) -> web.Response:
    name = request.app[ENGINE_KEY].name
    return web.json_response({"object": "list", "data": [{"id": "demo-model", "object": "model", "owned_by": name}]})


async def health(request: web.Request) -> web.Response:
    return web.Response(text="ok")


async def metrics(request: web.Request) -> web.Response:
    state = request.app[ENGINE_KEY]
    labels = '{model_name="demo-model"}'
    lines = [
        f"vllm:num_requests_running{labels} {state.running}",
        f"vllm:num_requests_waiting{labels} 0",
        f"vllm:kv_cache_usage_perc{labels} 0.0",
        f"vllm:request_success_total{labels} {state.served}",
    ]
    return web.Response(text="\n".join(lines) + "\n", content_type="text/plain")


def build_app(name: str) -> web.Application:
    app = web.Application(client_max_size=64 << 20)
    app[ENGINE_KEY] = EngineState(name)
    app.router.add_post("/v1/completions", completions)
    app.router.add_post("/v1/chat/completions", completions)
    app.router.add_post("/release/{key}", release)
    app.router.add_get("/v1/models", models)
    app.router.add_get("/health", health)
    app.router.add_get("/metrics", metrics)
    return app


async def serve(names: list[str], host: str = "127.0.0.1") -> None:
    """Host one engine per name on free ports, announce them on stdout, run until SIGTERM/SIGINT."""
    runners: list[web.AppRunner] = []
    ports: dict[str, int] = {}
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        for name in names:
            app = build_app(name)
            runner = web.AppRunner(app, access_log=None)
            await runner.setup()
            runners.append(runner)
            site = web.TCPSite(runner, host, 0)
            await site.start()
            port = runner.addresses[0][1]
            app[ENGINE_KEY].port = port
            ports[name] = port
        sys.stdout.write(orjson.dumps(ports).decode() + "\n")
        sys.stdout.flush()
        await stop.wait()
    finally:
        for runner in reversed(runners):
            await runner.cleanup()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Host tiny OpenAI-compatible echo engines on free ports.")
    parser.add_argument("--name", action="append", required=True, help="engine name (repeat for more engines)")
    args = parser.parse_args(argv)
    asyncio.run(serve(args.name))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
