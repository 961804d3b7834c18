"""What llm-d's routing sidecar does in front of a decode engine, inside ``epp sim``.

A request reaching a decode (or ``both``) engine with the prefill header the picker wrote
(``x-prefiller-host-port``, trusted first as the sidecar does, else ``x-llm-d-prefiller-host-port``) is
first sent to that prefill engine as the sidecar's NIXL path sends it: the same path and body with
``max_tokens`` (and ``max_completion_tokens``) 1, ``stream`` false, no ``stream_options``, and
``kv_transfer_params.do_remote_decode`` true. When the prefill answers 200 its KV "moves": the decode
engine stores the prompt's full blocks as cached (``EngineCore.receive_kv``), so the decode request finds
them as a prefix hit, and both engines' metrics and KV events show their half. A prefill that fails is the
client's answer (its status and body, or 502 when the prefill engine cannot be reached), as the sidecar
answers. A prefill engine itself has no sidecar: the header is ignored there.

E/P/D (llm-d-router ``pkg/sidecar/proxy/connector_ec_common.go``): a multimodal request with the encoder
header (``x-encoder-hosts-ports``, trusted first, else ``x-llm-d-encoder-hosts-ports``; a comma-separated
list) first has its media items — URL items deduplicated — sent one request each, in parallel and round
robin over the list, to the encode engines: the client's body with ``messages`` replaced by one user
message holding only that item, one output token, not streamed. The first failure is the client's answer.
Then the encoder outputs "move" (upstream's EC connector): a prefill request carries
``ec_transfer_params`` and the engine that runs the prompt skips the encode cost it would otherwise pay
itself (``SimServer``).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import Any

import aiohttp

from epp.request import RequestError
from epp.request.headers import ENCODER_HEADERS
from epp.sim.protocol import MediaItem

log = logging.getLogger("epp.sim")

ROLES = ("prefill", "decode", "both", "encode")
PREFILL_TIMEOUT_SECONDS = 600.0
EC_TRANSFER_PARAMS = "ec_transfer_params"
CHAT_PATH = "/v1/chat/completions"


def encoder_targets(role: str, headers: Any) -> list[str]:
    """The encode engines' ``host:port`` list this request asks for; empty when it encodes where it runs."""
    if role in ("prefill", "encode"):
        return []
    for name in reversed(ENCODER_HEADERS):
        value = headers.get(name)
        if value:
            return [hp.strip() for hp in str(value).split(",") if hp.strip()]
    return []


def fanout_items(items: Sequence[MediaItem]) -> list[MediaItem]:
    """What the sidecar sends to encoders: every item, URL items once each."""
    seen: set[str] = set()
    out = []
    for item in items:
        if item.url:
            if item.url in seen:
                continue
            seen.add(item.url)
        out.append(item)
    return out


def encoder_body(body: dict[str, Any], item: MediaItem) -> dict[str, Any]:
    out = {k: v for k, v in body.items() if k != "stream_options"}
    out["messages"] = [{"role": "user", "content": [dict(item.part)]}]
    out["max_tokens"] = 1
    if "max_completion_tokens" in out:
        out["max_completion_tokens"] = 1
    out["stream"] = False
    return out


def prefill_body(body: dict[str, Any]) -> dict[str, Any]:
    out = {k: v for k, v in body.items() if k != "stream_options"}
    out["max_tokens"] = 1
    if "max_completion_tokens" in out:
        out["max_completion_tokens"] = 1
    out["stream"] = False
    out["kv_transfer_params"] = {"do_remote_decode": True, "do_remote_prefill": False, "remote_engine_id": None,
                                 "remote_block_ids": None, "remote_host": None, "remote_port": None}
    return out


class SidecarClient:
    """One HTTP session to the prefill and encode engines, opened with the server and closed with it."""

    def __init__(self) -> None:
        self._session: aiohttp.ClientSession | None = None

    async def prefill(self, hostport: str, path: str, body: dict[str, Any], request_id: str) -> None:
        """Run the prompt's prefill remotely; raises ``RequestError`` carrying the prefill's failure."""
        await self._post(hostport, path, prefill_body(body), request_id, "prefill")

    async def encode(self, hostports: Sequence[str], body: dict[str, Any], items: Sequence[MediaItem],
                     request_id: str) -> None:
        """Encode ``items`` on ``hostports`` (round robin, in parallel); the first failure cancels the rest
        and is raised as ``RequestError``."""
        try:
            async with asyncio.TaskGroup() as group:
                for i, item in enumerate(items):
                    group.create_task(self._post(hostports[i % len(hostports)], CHAT_PATH, encoder_body(body, item),
                                                 f"{request_id}-enc-{i}", "encode"))
        except ExceptionGroup as failures:  # only RequestError can escape _post
            raise failures.exceptions[0] from None

    async def _post(self, hostport: str, path: str, body: dict[str, Any], request_id: str, stage: str) -> None:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=PREFILL_TIMEOUT_SECONDS))
        url = f"http://{hostport}{path}"
        error_type = f"{stage.capitalize()}Error"
        try:
            async with self._session.post(url, json=body, headers={"x-request-id": request_id}) as resp:
                payload = await resp.read()
                if resp.status != 200:
                    log.info("remote %s on %s failed with %d", stage, hostport, resp.status)
                    raise RequestError(resp.status, f"{stage} on {hostport} failed: {payload[:200].decode(errors='replace')}",
                                       error_type=error_type, code=str(resp.status))
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            raise RequestError(502, f"{stage} engine {hostport} unreachable: {exc}", error_type=error_type,
                               code="502") from None

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
