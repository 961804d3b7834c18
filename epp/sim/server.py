"""The simulator's HTTP server: vLLM's OpenAI-compatible API around one ``EngineCore``.

Routes: ``POST /v1/completions``, ``POST /v1/chat/completions`` (streaming or not), ``GET /v1/models``,
``GET /health``, ``GET /metrics``, ``POST /tokenize``, ``POST /detokenize``. The model always generates
exactly ``max_tokens`` filler tokens (``--default-max-tokens`` when the request gives none) and
finishes with ``finish_reason: "length"``. A request names a LoRA adapter by using its name as the
model. Errors are OpenAI error objects: 400 for bad JSON or parameters, 404 ``model_not_found``.
A client that disconnects (streaming or not) has its request aborted in the engine, as vLLM does.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web

from epp._util.clock import Clock
from epp._util import byte_tokenizer as tokenizer
from epp.engine.config import EngineConfig
from epp.engine.core import EngineCore, StepOutput
from epp.request import RequestError
from epp.sim import protocol
from epp.sim.engine_loop import EngineLoop
from epp.sim.faults import FaultConfig, Faults
from epp.kvevents.encode import WireFormat
from epp.sim.kv_events import KVEventPublisher
from epp.sim.metrics import SimMetrics
from epp.request.headers import prefill_target
from epp.sim.sidecar import EC_TRANSFER_PARAMS, SidecarClient, encoder_targets, fanout_items

log = logging.getLogger("epp.sim")

_SSE_HEADERS = {"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}


@dataclass(frozen=True, slots=True)
class SimOptions:
    engine_config: EngineConfig = field(default_factory=EngineConfig)
    served_model_names: tuple[str, ...] = ()
    """Names the base model answers to; empty = ``engine_config.model``. The first one labels metrics."""
    engine: str = "vllm"
    time_scale: float = 1.0
    default_max_tokens: int = 16
    faults: FaultConfig = field(default_factory=FaultConfig)
    kv_events_endpoint: str | None = None
    kv_events_topic: str = ""
    """vLLM's default, empty; ``{host}``, ``{port}`` and ``{model}`` are filled in."""
    kv_events_wire: WireFormat = WireFormat.VLLM
    kv_events_replay_endpoint: str | None = None
    prompt_tokens_details: bool = False
    """``usage.prompt_tokens_details`` (vLLM's ``--enable-prompt-tokens-details``); null without it."""
    legacy_metrics: bool = False
    role: str = "both"
    """Disaggregation role (llm-d.ai/role): decode and both engines run a sidecar's remote encode and prefill;
    an encode engine only encodes (its requests' prompts are the media items it is sent)."""

    @property
    def model_names(self) -> tuple[str, ...]:
        return self.served_model_names or (self.engine_config.model,)


class SimServer:
    """Owns the engine, its loop task, the KV-event socket and the aiohttp runner."""

    def __init__(
        self, options: SimOptions, *, clock: Clock, wall_time: Callable[[], float], crash: Callable[[], None]
    ) -> None:
        self.options = options
        self.core = EngineCore(options.engine_config)
        self.metrics = SimMetrics(
            self.core, engine=options.engine, model_name=options.model_names[0], wall_time=wall_time,
            legacy=options.legacy_metrics,
        )
        self.faults = Faults(options.faults, options.engine_config.seed)
        self.loop = EngineLoop(self.core, time_scale=options.time_scale, clock=clock, on_step=self._on_step)
        self._wall_time = wall_time
        self._crash = crash
        self._rng = random.Random(options.engine_config.seed)
        self._last_token: dict[str, float] = {}
        self._publisher: KVEventPublisher | None = None
        self._runner: web.AppRunner | None = None
        self._task: asyncio.Task[None] | None = None
        self._sidecar = SidecarClient()
        self._internal: set[str] = set()  # local encoder work: engine time, not a request of the API
        self._replay_task: asyncio.Task[None] | None = None
        self.port = 0

    # -- lifecycle ---------------------------------------------------------------------------------

    def app(self) -> web.Application:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_post("/v1/completions", self._completions)
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_get("/v1/models", self._models)
        app.router.add_get("/health", self._health)
        app.router.add_get("/metrics", self._metrics)
        app.router.add_post("/tokenize", self._tokenize)
        app.router.add_post("/detokenize", self._detokenize)
        return app

    async def start(self, host: str, port: int) -> None:
        """Listen, then start the engine loop (and the KV-event publisher if configured)."""
        self._runner = web.AppRunner(self.app(), access_log=None, handle_signals=False, handler_cancellation=True)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port, reuse_address=True)
        await site.start()
        server = site._server
        assert server is not None and server.sockets  # type: ignore[attr-defined]
        self.port = server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]
        if self.options.kv_events_endpoint:
            lora_ids = {name: i + 1 for i, name in enumerate(self.options.engine_config.lora_adapters)}
            topic = self.options.kv_events_topic.format(host=host, port=self.port, model=self.options.model_names[0])
            self._publisher = KVEventPublisher(
                self.options.kv_events_endpoint, topic, lora_ids=lora_ids, wall_time=self._wall_time,
                wire=self.options.kv_events_wire, replay_endpoint=self.options.kv_events_replay_endpoint,
            )
            log.info("KV events on %s (topic %r)", self.options.kv_events_endpoint, topic)
            if self.options.kv_events_replay_endpoint:
                log.info("KV-event replay on %s", self._publisher.replay_endpoint)
                self._replay_task = asyncio.create_task(self._serve_replay(self._publisher), name="kv-replay")
        self._task = asyncio.create_task(self.loop.run(), name="engine-loop")

    async def stop(self) -> None:
        """Stop the engine loop, then the listener (waiting briefly for handlers), then the socket."""
        for task in (self._task, self._replay_task):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        if self._runner is not None:
            await self._runner.cleanup()
        if self._publisher is not None:
            self._publisher.close()
        await self._sidecar.close()

    async def _serve_replay(self, publisher: KVEventPublisher) -> None:
        """vLLM's publisher thread polls its replay socket every 0.1 s; so does this task."""
        while True:
            publisher.serve_replay()
            await asyncio.sleep(0.05)

    # -- engine side -------------------------------------------------------------------------------

    def _on_step(self, out: StepOutput, end: float) -> None:
        metrics = self.metrics
        last = self._last_token
        internal = self._internal
        for o in out.outputs:
            if o.request_id in internal:
                if o.finished:
                    internal.discard(o.request_id)
                continue
            n = len(o.new_token_ids)
            if o.first_token:
                metrics.ttft.observe(end - o.arrival_time)
                n -= 1
            elif n:
                metrics.itl.observe((end - last[o.request_id]) / n, n)
            if o.finished:
                metrics.e2e.observe(end - o.arrival_time)
                metrics.request_finished(o)
                last.pop(o.request_id, None)
            else:
                last[o.request_id] = end
        if self._publisher is not None:
            self._publisher.publish(self.core.take_kv_events())

    # -- handlers ----------------------------------------------------------------------------------

    async def _completions(self, request: web.Request) -> web.StreamResponse:
        return await self._generate(request, protocol.COMPLETIONS)

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        return await self._generate(request, protocol.CHAT)

    async def _generate(self, request: web.Request, kind: str) -> web.StreamResponse:
        faults = self.faults
        if faults.config.extra_latency:
            await asyncio.sleep(faults.config.extra_latency)
        try:
            if faults.fail_this_request():
                raise RequestError(
                    500, "injected fault: internal server error", error_type="InternalServerError", code="500"
                )
            body = await _json(request)
            parsed = protocol.parse(kind, body, self.options.default_max_tokens)
            lora = self._resolve_model(parsed.model)
            rid = self._request_id()
            role, headers = self.options.role, request.headers
            request_id = headers.get("x-request-id", rid)
            encoded = not parsed.media or role == "encode" or bool(body.get(EC_TRANSFER_PARAMS))
            if not encoded and (encoders := encoder_targets(role, headers)):
                await self._sidecar.encode(encoders, body, fanout_items(parsed.media), request_id)
                body = {**body, EC_TRANSFER_PARAMS: {"encoders": encoders}}  # the outputs move with the request
                encoded = True
            if (prefill := prefill_target(role, headers)) is not None:
                await self._sidecar.prefill(prefill, request.path, body, request_id)
                self.core.receive_kv(parsed.prompt_token_ids, lora)
                encoded = True  # the prefill engine encoded what the encoders had not
            arrival = None
            if not encoded:  # vLLM runs the encoder in the request's own steps: its TTFT includes it
                arrival = self.loop.now()
                await self._encode_here(parsed.media, lora)
            try:
                outputs = self.loop.submit(rid, parsed.prompt_token_ids, parsed.max_tokens, lora, parsed.cache_salt,
                                           arrival)
            except ValueError as exc:
                raise protocol.bad_request(str(exc)) from exc
        except RequestError as err:
            return _error(err)
        prefix = "chatcmpl-" if kind == protocol.CHAT else "cmpl-"
        public_id = prefix + rid
        created = int(self._wall_time())
        prompt_tokens = len(parsed.prompt_token_ids)
        finished = False
        try:
            if not parsed.stream:
                texts: list[str] = []
                while True:
                    o = await outputs.get()
                    texts.append(tokenizer.decode(o.new_token_ids))
                    if o.finished:
                        finished = True
                        break
                usage = protocol.usage(prompt_tokens, o.num_output_tokens, o.num_cached_tokens, self.options.prompt_tokens_details)
                body = protocol.response_body(kind, public_id, created, parsed.model, "".join(texts), usage)
                return web.Response(body=orjson.dumps(body), content_type="application/json")
            response = web.StreamResponse(headers=_SSE_HEADERS)
            await response.prepare(request)
            if kind == protocol.CHAT:
                first = protocol.stream_chunk(kind, public_id, created, parsed.model, "", None, role=True)
                await response.write(_sse(first))
            while not finished:
                o = await outputs.get()
                finished = o.finished
                chunk = protocol.stream_chunk(
                    kind,
                    public_id,
                    created,
                    parsed.model,
                    tokenizer.decode(o.new_token_ids),
                    "length" if finished else None,
                )
                await response.write(_sse(chunk))
            if parsed.include_usage:
                usage = protocol.usage(prompt_tokens, o.num_output_tokens, o.num_cached_tokens, self.options.prompt_tokens_details)
                await response.write(_sse(protocol.usage_chunk(kind, public_id, created, parsed.model, usage)))
            await response.write(b"data: [DONE]\n\n")
            await response.write_eof()
            return response
        finally:
            if not finished:
                self.loop.abort(rid)
            elif faults.request_finished():
                log.error("fault injection: crashing after %d requests", faults.config.crash_after)
                asyncio.get_running_loop().call_later(0.05, self._crash)  # let the response flush

    async def _encode_here(self, media: tuple[protocol.MediaItem, ...], lora: str | None) -> None:
        """Run the vision/audio encoder on this engine: as much engine time as prefilling the items'
        placeholder tokens once, in a separate cache namespace so it never passes for the prompt's own
        prefill. The work shows in the engine's load and step times, not as an API request."""
        rid = "encoder-" + self._request_id()
        tokens = [t for item in media for t in item.tokens]
        try:
            outputs = self.loop.submit(rid, tokens, 1, lora, cache_salt=rid)
        except ValueError as exc:
            raise protocol.bad_request(str(exc)) from exc
        self._internal.add(rid)
        try:
            while not (await outputs.get()).finished:
                pass
        finally:
            self._internal.discard(rid)
            self.loop.abort(rid)

    def _resolve_model(self, model: str) -> str | None:
        if model in self.options.model_names:
            return None
        if model in self.options.engine_config.lora_adapters:
            return model
        raise RequestError(
            404, f"The model `{model}` does not exist.", error_type="NotFoundError", code="model_not_found"
        )

    def _request_id(self) -> str:
        return uuid.UUID(int=self._rng.getrandbits(128), version=4).hex

    async def _models(self, request: web.Request) -> web.Response:
        base = self.options.model_names[0]
        created = int(self._wall_time())
        owned_by = self.options.engine
        max_len = self.core.max_model_len

        def card(name: str, root: str, parent: str | None) -> dict[str, Any]:
            return {"id": name, "object": "model", "created": created, "owned_by": owned_by, "root": root,
                    "parent": parent, "max_model_len": max_len}  # fmt: skip

        data = [card(name, self.options.engine_config.model, None) for name in self.options.model_names]
        data += [card(name, name, base) for name in self.options.engine_config.lora_adapters]
        return web.json_response({"object": "list", "data": data}, dumps=_dumps)

    async def _health(self, request: web.Request) -> web.Response:
        return web.Response(status=200)

    async def _metrics(self, request: web.Request) -> web.Response:
        fault = self.options.faults.metrics
        if fault == "hang":
            await asyncio.Event().wait()
        if fault == "garbage":
            return web.Response(text="vllm:num_requests_running{{{ not prometheus\n\x00garbage 1 2 3 4\n")
        return web.Response(body=self.metrics.render(), content_type="text/plain", charset="utf-8")

    async def _tokenize(self, request: web.Request) -> web.Response:
        try:
            body = await _json(request)
            if not isinstance(body, dict):
                raise protocol.bad_request("request body must be a JSON object")
            if "messages" in body:
                ids = protocol.chat_prompt(body["messages"])
            elif isinstance(body.get("prompt"), str):
                ids = tokenizer.encode(body["prompt"])
            else:
                raise protocol.bad_request("give either a string 'prompt' or 'messages'")
            if "model" in body:
                self._resolve_model(str(body["model"]))
        except RequestError as err:
            return _error(err)
        out = {"count": len(ids), "max_model_len": self.core.max_model_len, "tokens": ids, "token_strs": None}
        return web.json_response(out, dumps=_dumps)

    async def _detokenize(self, request: web.Request) -> web.Response:
        try:
            body = await _json(request)
            tokens = body.get("tokens") if isinstance(body, dict) else None
            if not isinstance(tokens, list) or not all(isinstance(t, int) and not isinstance(t, bool) for t in tokens):
                raise protocol.bad_request("tokens must be a list of integers")
            try:
                text = tokenizer.decode(tokens)
            except ValueError as exc:
                raise protocol.bad_request(str(exc)) from exc
        except RequestError as err:
            return _error(err)
        return web.json_response({"prompt": text}, dumps=_dumps)


async def _json(request: web.Request) -> Any:
    raw = await request.read()
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise protocol.bad_request(f"Invalid JSON body: {exc}") from exc


def _error(err: RequestError) -> web.Response:
    return web.Response(status=err.status, body=err.to_json(), content_type="application/json")


def _sse(obj: dict[str, Any]) -> bytes:
    return b"data: " + orjson.dumps(obj) + b"\n\n"


def _dumps(obj: Any) -> str:
    return orjson.dumps(obj).decode()
