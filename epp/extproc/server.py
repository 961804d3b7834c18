"""The picker's gRPC servers: ext_proc (TLS by default) and the plaintext health port, with graceful stop."""

from __future__ import annotations

import asyncio
import contextlib
import logging

import grpc
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as pb_grpc
from grpc_health.v1 import health_pb2_grpc

from epp.extproc.health import HealthService

log = logging.getLogger(__name__)

# Room for BUFFERED bodies up to the body limit plus protobuf framing (Python's default cap is 4 MiB).
MESSAGE_OVERHEAD_BYTES = 1024 * 1024
# Probes are short Check calls; Watch streams live forever, so their number needs a cap too.
HEALTH_MAX_RPCS = 256


class PickerServer:
    """Owns two grpc.aio servers. ``port``/``health_port`` 0 binds a free port; the bound ports are
    readable after ``start``.

    ``max_concurrent_rpcs`` makes gRPC refuse calls beyond it with RESOURCE_EXHAUSTED (None: no cap).
    ``stop`` reports NOT_SERVING at once but keeps serving new streams for the drain period (gateways
    and Kubernetes endpoints need time to stop sending here; refusing at once makes a fail-closed
    gateway answer 5xx on every rollout), then stops accepting and lets open streams finish within the
    grace period (after which gRPC cancels them), and closes the health port last.
    """

    def __init__(
        self,
        servicer: pb_grpc.ExternalProcessorServicer,
        health: HealthService,
        *,
        port: int,
        health_port: int,
        host: str = "[::]",
        credentials: grpc.ServerCredentials | None = None,
        max_message_bytes: int = 16 * 1024 * 1024,
        health_on_main_port: bool = False,
        max_concurrent_rpcs: int | None = None,
    ) -> None:
        self.servicer = servicer
        self.health = health
        self.host = host
        self.port = port
        self.health_port = health_port
        self.credentials = credentials
        self.health_on_main_port = health_on_main_port
        limit = max_message_bytes + MESSAGE_OVERHEAD_BYTES
        self._options = [("grpc.max_receive_message_length", limit), ("grpc.max_send_message_length", limit)]
        self._max_rpcs = max_concurrent_rpcs
        self._main: grpc.aio.Server | None = None
        self._health: grpc.aio.Server | None = None

    async def start(self) -> None:
        main = grpc.aio.server(options=self._options, maximum_concurrent_rpcs=self._max_rpcs)
        pb_grpc.add_ExternalProcessorServicer_to_server(self.servicer, main)
        if self.health_on_main_port:
            health_pb2_grpc.add_HealthServicer_to_server(self.health, main)
        address = f"{self.host}:{self.port}"
        if self.credentials is not None:
            self.port = main.add_secure_port(address, self.credentials)
        else:
            self.port = main.add_insecure_port(address)
        health = grpc.aio.server(maximum_concurrent_rpcs=HEALTH_MAX_RPCS)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, health)
        self.health_port = health.add_insecure_port(f"{self.host}:{self.health_port}")
        await health.start()
        try:
            await main.start()
        except BaseException:
            await health.stop(0)  # a half-started server must not keep the health port answering
            raise
        self._health = health
        self._main = main
        log.info("ext_proc server on %s:%d (%s), health on %s:%d", self.host, self.port,
                 "TLS" if self.credentials is not None else "plaintext", self.host, self.health_port)

    async def stop(self, grace: float, drain: float = 0.0, hurry: asyncio.Event | None = None) -> None:
        """NOT_SERVING now; keep serving for ``drain`` s (or until ``hurry`` is set); then stop with ``grace``."""
        self.health.drain()
        if self._main is not None and drain > 0:
            log.info("draining: health NOT_SERVING, still serving new streams for %.1fs", drain)
            waiter = hurry.wait() if hurry is not None else asyncio.sleep(drain)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(waiter, drain)
        if self._main is not None:
            log.info("no longer accepting streams; open ones have up to %.1fs to finish", grace)
            await self._main.stop(grace)
            self._main = None
        if self._health is not None:
            await self._health.stop(0)
            self._health = None
