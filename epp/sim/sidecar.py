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
"""

from __future__ import annotations

import logging
from typing import Any

import aiohttp

from epp.request import RequestError

log = logging.getLogger("epp.sim")

ROLES = ("prefill", "decode", "both")
PREFILL_TIMEOUT_SECONDS = 600.0


def prefill_body(body: dict[str, Any]) -> dict[str, Any]:
    out = {k: v for k, v in body.items() if k != "stream_options"}
    out["max_tokens"] = 1
    if "max_completion_tokens" in out:
        out["max_completion_tokens"] = 1
    out["stream"] = False
    out["kv_transfer_params"] = {"do_remote_decode": True, "do_remote_prefill": False, "remote_engine_id": None,
                                 "remote_block_ids": None, "remote_host": None, "remote_port": None}
    return out


class PrefillClient:
    """One HTTP session to the prefill engines, opened with the server and closed with it."""

    def __init__(self) -> None:
        self._session: aiohttp.ClientSession | None = None

    async def prefill(self, hostport: str, path: str, body: dict[str, Any], request_id: str) -> None:
        """Run the prompt's prefill remotely; raises ``RequestError`` carrying the prefill's failure."""
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=PREFILL_TIMEOUT_SECONDS))
        url = f"http://{hostport}{path}"
        try:
            async with self._session.post(url, json=prefill_body(body), headers={"x-request-id": request_id}) as resp:
                payload = await resp.read()
                if resp.status != 200:
                    log.info("remote prefill on %s failed with %d", hostport, resp.status)
                    raise RequestError(resp.status, f"prefill on {hostport} failed: {payload[:200].decode(errors='replace')}",
                                       error_type="PrefillError", code=str(resp.status))
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            raise RequestError(502, f"prefill engine {hostport} unreachable: {exc}", error_type="PrefillError",
                               code="502") from None

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
