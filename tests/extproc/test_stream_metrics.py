"""``--enable-grpc-stream-metrics`` on both transports: in-flight gauge, duration histogram and completions
by grpc-go's status names, for streams that end cleanly, by a protocol violation, and by cancellation."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as pb_grpc
from prometheus_client import CollectorRegistry

from epp.extproc.health import HealthService
from epp.extproc.server import PickerServer
from epp.extproc.servicer import ExtProcServicer
from epp.extproc.stream_metrics import StreamMetrics
from tests.conftest import wait_for
from tests.extproc.builders import CHAT_BODY, make_director, request_body, request_headers


def value(registry: CollectorRegistry, name: str, **labels: str) -> float:
    return registry.get_sample_value(name, labels) or 0.0


@pytest.mark.parametrize("native", [False, True], ids=["grpcio", "native"])
async def test_streams_are_counted_by_how_they_end(native: bool) -> None:
    registry = CollectorRegistry()
    servicer = ExtProcServicer(make_director("10.0.0.1:8000"))
    servicer.stream_metrics = StreamMetrics(registry)
    server = PickerServer(servicer, HealthService(lambda: True), port=0, health_port=0, host="127.0.0.1", native=native)
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            stub = pb_grpc.ExternalProcessorStub(channel)
            ok = stub.Process(iter([request_headers(), request_body(CHAT_BODY, eos=True)]), timeout=10)
            assert len([r async for r in ok]) >= 2
            bad = stub.Process(iter([request_body(CHAT_BODY, eos=True)]), timeout=10)  # body before headers
            with pytest.raises(grpc.aio.AioRpcError):
                _ = [r async for r in bad]
            hanging = stub.Process(timeout=10)
            await hanging.write(request_headers())
            await wait_for(lambda: value(registry, "llm_d_epp_extproc_streams_inflight") == 1.0)
            hanging.cancel()
            await wait_for(lambda: value(registry, "llm_d_epp_extproc_streams_inflight") == 0.0)
        # grpc.aio reads a client's cancellation as the end of the stream: OK there (see stream_metrics)
        cancelled = "Canceled" if native else "OK"
        assert value(registry, "llm_d_epp_extproc_streams_total", code="OK") == (1.0 if native else 2.0)
        assert value(registry, "llm_d_epp_extproc_streams_total", code=cancelled) >= 1.0
        assert value(registry, "llm_d_epp_extproc_streams_total", code="InvalidArgument") == 1.0
        assert value(registry, "llm_d_epp_extproc_stream_duration_seconds_count") == 3.0
    finally:
        await server.stop(0)
    await asyncio.sleep(0)


def test_off_by_default() -> None:
    assert ExtProcServicer(make_director("10.0.0.1:8000")).stream_metrics is None
