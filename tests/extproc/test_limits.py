"""Stream limit and buffer gauges on a real grpc.aio picker, driven message by message."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import grpc
import pytest
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as pb_grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client import CollectorRegistry

from epp.extproc.health import HealthService
from epp.extproc.limits import StreamLimiter
from epp.extproc import server as server_module
from epp.extproc.server import PickerServer
from epp.extproc.servicer import ExtProcServicer
from epp.extproc.stream import ProtocolViolation, RequestStream
from epp.request import RequestError
from tests.extproc.builders import CHAT_BODY, immediate, make_director, request_body, request_headers

POOL = ("10.0.0.1:8000",)


async def until(condition: Callable[[], bool]) -> None:
    """The server handles messages on its own schedule: look again (bounded) until it has."""
    for _ in range(500):
        if condition():
            return
        await asyncio.sleep(0.01)


def gauge(registry: CollectorRegistry, name: str) -> float | None:
    return registry.get_sample_value(name)


async def test_streams_past_the_limit_get_503_and_gauges_show_fill() -> None:
    director = make_director(*POOL)
    registry = director.telemetry.registry
    limiter = StreamLimiter(2, max_body_bytes=50_000, registry=registry)
    server = PickerServer(ExtProcServicer(director, 50_000, limiter), HealthService(lambda: True), port=0,
                          health_port=0, host="127.0.0.1", max_message_bytes=50_000, max_concurrent_rpcs=4)
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            stub = pb_grpc.ExternalProcessorStub(channel)
            held = [stub.Process(timeout=10) for _ in range(2)]
            for call in held:  # headers and half a body: both streams are live and buffering
                await call.write(request_headers())
                await call.write(request_body(b"x" * 1000))
            await until(lambda: gauge(registry, "epp_extproc_buffered_bytes") == 2000)
            assert gauge(registry, "epp_extproc_streams") == 2
            assert gauge(registry, "epp_extproc_buffered_bytes") == 2000
            assert gauge(registry, "epp_extproc_streams_limit") == 2
            assert gauge(registry, "epp_extproc_stream_buffer_limit_bytes") == 50_000

            refused = stub.Process(iter([request_headers(extra={"x-request-id": "over"}), request_body(CHAT_BODY, True)]))
            (reply,) = [r async for r in refused]
            status, _, payload = immediate(reply)
            assert (status, payload["error"]["code"]) == (503, "overloaded")
            assert gauge(registry, "epp_extproc_streams_refused_total") == 1
            labels = {"model_name": "", "target_model_name": "", "error_code": "ServiceUnavailable"}
            assert registry.get_sample_value("inference_objective_request_error_total", labels) == 1

            for call in held:
                await call.write(request_body(b"", eos=True))
                await call.done_writing()
                assert len([r async for r in call]) == 1  # "xxx…" is no JSON: one 400 immediate answer
        await until(lambda: len(limiter) == 0)
        assert len(limiter) == 0 and gauge(registry, "epp_extproc_buffered_bytes") == 0
    finally:
        await server.stop(0)


def test_limit_must_be_positive() -> None:
    with pytest.raises(ValueError):
        StreamLimiter(0)


def test_refusal_needs_the_headers_first() -> None:
    stream = RequestStream(make_director(*POOL))
    with pytest.raises(ProtocolViolation):
        stream.refuse(request_body(b"x"), RequestError(503, "busy"))


def test_routed_stream_drops_its_request_body_and_counts_response_buffers() -> None:
    stream = RequestStream(make_director(*POOL))
    stream.handle(request_headers())
    stream.handle(request_body(CHAT_BODY[:10]))
    assert stream.buffered_bytes == 10
    stream.handle(request_body(CHAT_BODY[10:], eos=True))
    assert stream.buffered_bytes == 0  # forwarded: not held for the whole response
    stream.close()


async def test_health_watch_streams_are_capped(monkeypatch: pytest.MonkeyPatch) -> None:
    """Watch streams never end on their own: past the cap, gRPC refuses more with RESOURCE_EXHAUSTED."""
    monkeypatch.setattr(server_module, "HEALTH_MAX_RPCS", 2)
    server = PickerServer(ExtProcServicer(make_director(*POOL)), HealthService(lambda: True, poll_interval=0.02),
                          port=0, health_port=0, host="127.0.0.1")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.health_port}") as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            watches = [stub.Watch(health_pb2.HealthCheckRequest()) for _ in range(2)]
            for watch in watches:
                assert (await watch.read()).status == health_pb2.HealthCheckResponse.SERVING
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await stub.Check(health_pb2.HealthCheckRequest(), timeout=5)
            assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            watches[0].cancel()
            for _ in range(100):  # the freed slot is usable again
                try:
                    await stub.Check(health_pb2.HealthCheckRequest(), timeout=5)
                    break
                except grpc.aio.AioRpcError:
                    await asyncio.sleep(0.02)
            else:
                raise AssertionError("health port stayed exhausted after a Watch ended")
            watches[1].cancel()
    finally:
        await server.stop(0)
