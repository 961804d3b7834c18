"""gRPC health service answering every service name from one readiness callable.

The reference picker (without leader election) reports any service name — ``""``, ``liveness``,
``readiness``, ``inference-extension``, ``envoy.service.ext_proc.v3.ExternalProcessor`` or anything
else — SERVING exactly when it is ready; probes configured with a different name therefore never
get SERVICE_UNKNOWN. With leader election, ``liveness`` is always SERVING (a standby is healthy, not
to be restarted), the readiness names follow readiness (synced and leader), and ``Check`` of any other
name fails with gRPC status NOT_FOUND, as upstream's health server answers (``Watch`` streams
SERVICE_UNKNOWN, as grpc's health protocol specifies). Draining forces the readiness names to NOT_SERVING so load balancers stop sending
before we stop.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from epp.extproc.h2.connection import CallError

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
SERVICE_UNKNOWN = health_pb2.HealthCheckResponse.SERVICE_UNKNOWN
GRPC_NOT_FOUND = 5
LIVENESS = "liveness"
READINESS_NAMES = frozenset({"", "readiness", "inference-extension", "envoy.service.ext_proc.v3.ExternalProcessor"})


class HealthService(health_pb2_grpc.HealthServicer):  # type: ignore[misc]  # *_pb2_grpc modules are untyped
    """``Check`` evaluates readiness per call; ``Watch`` re-evaluates every ``poll_interval`` seconds
    and sends a message whenever the status changes (and once at the start)."""

    def __init__(self, readiness: Callable[[], bool], poll_interval: float = 0.5, leader_election: bool = False) -> None:
        self.readiness = readiness
        self.poll_interval = poll_interval
        self.leader_election = leader_election
        self.draining = False
        self._changed = asyncio.Event()

    def status(self, service: str = "") -> health_pb2.HealthCheckResponse.ServingStatus.ValueType:
        if self.leader_election:
            if service == LIVENESS:
                return SERVING
            if service not in READINESS_NAMES:
                return SERVICE_UNKNOWN
        return SERVING if not self.draining and self.readiness() else NOT_SERVING

    def drain(self) -> None:
        """From now on report NOT_SERVING for every service, and tell watchers at once."""
        self.draining = True
        self._changed.set()

    async def Check(  # noqa: N802
        self,
        request: health_pb2.HealthCheckRequest,
        context: grpc.aio.ServicerContext[health_pb2.HealthCheckRequest, health_pb2.HealthCheckResponse],
    ) -> health_pb2.HealthCheckResponse:
        status = self.status(request.service)
        if status == SERVICE_UNKNOWN:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"unknown service {request.service!r}")
        return health_pb2.HealthCheckResponse(status=status)

    async def Watch(  # noqa: N802
        self,
        request: health_pb2.HealthCheckRequest,
        context: grpc.aio.ServicerContext[health_pb2.HealthCheckRequest, health_pb2.HealthCheckResponse],
    ) -> AsyncIterator[health_pb2.HealthCheckResponse]:
        last = None
        while True:
            current = self.status(request.service)
            if current != last:
                yield health_pb2.HealthCheckResponse(status=current)
                last = current
            if self.draining:  # final state: nothing can change any more, just keep the stream open
                await asyncio.sleep(self.poll_interval)
                continue
            try:
                await asyncio.wait_for(self._changed.wait(), self.poll_interval)
            except TimeoutError:
                pass


HEALTH_CHECK_PATH = b"/grpc.health.v1.Health/Check"


class HealthCheckCall:
    """``Health/Check`` on the native transport's main port (``--health-checking``); ``Watch`` is served on
    the health port only."""

    __slots__ = ("health", "service")

    def __init__(self, health: HealthService) -> None:
        self.health = health
        self.service = ""

    def message(self, data: memoryview) -> list[bytes]:
        self.service = health_pb2.HealthCheckRequest.FromString(data).service
        return []

    def half_closed(self) -> list[bytes]:
        status = self.health.status(self.service)
        if status == SERVICE_UNKNOWN:
            raise CallError(GRPC_NOT_FOUND, f"unknown service {self.service!r}")
        return [health_pb2.HealthCheckResponse(status=status).SerializeToString()]

    def closed(self) -> None:
        pass
