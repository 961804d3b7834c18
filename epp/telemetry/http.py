"""``GET /metrics`` over aiohttp, serving one ``Telemetry`` registry."""

from __future__ import annotations

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from epp.telemetry.metrics import Telemetry


class MetricsServer:
    """Owns the aiohttp runner for the metrics port; ``start`` binds, ``stop`` closes the listener."""

    def __init__(self, telemetry: Telemetry, port: int, host: str | None = None) -> None:
        """``host`` None listens on all interfaces; ``port`` 0 picks a free one (read ``port`` after start)."""
        self.telemetry = telemetry
        self.host = host
        self.port = port
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/metrics", self._metrics)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, self.host, self.port)
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
        body = generate_latest(self.telemetry.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})
