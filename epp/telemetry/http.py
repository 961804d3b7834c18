"""``GET /metrics`` over aiohttp, serving one ``Telemetry`` registry, optionally behind Kubernetes token
auth (``epp.telemetry.auth``)."""

from __future__ import annotations

import ssl
from typing import TYPE_CHECKING

from aiohttp import hdrs, web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from epp.telemetry.metrics import Telemetry

if TYPE_CHECKING:
    from epp.telemetry.auth import KubeMetricsAuth


class MetricsServer:
    """Owns the aiohttp runner for the metrics port; ``start`` binds, ``stop`` closes the listener."""

    def __init__(
        self, telemetry: Telemetry, port: int, host: str | None = None, auth: KubeMetricsAuth | None = None,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        """``host`` None listens on all interfaces; ``port`` 0 picks a free one (read ``port`` after start).
        With ``auth`` every request needs a verdict of 200 from it (a started ``KubeMetricsAuth``); with
        ``ssl_context`` the port serves HTTPS (``--metrics-cert-dir``)."""
        self.ssl_context = ssl_context
        self.telemetry = telemetry
        self.auth = auth
        self.host = host
        self.port = port
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/metrics", self._metrics)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, self.host, self.port, ssl_context=self.ssl_context)
        try:
            await site.start()
        except BaseException:
            await runner.cleanup()  # e.g. the port is taken: release what setup() acquired
            raise
        self._runner = runner
        if self.port == 0:
            self.port = runner.addresses[0][1]

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _metrics(self, request: web.Request) -> web.Response:
        if self.auth is not None:
            verdict = await self.auth.check(request.headers.get(hdrs.AUTHORIZATION), request.method, request.path)
            if verdict.status != 200:
                return web.Response(status=verdict.status, text=verdict.message + "\n")
        body = generate_latest(self.telemetry.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})
