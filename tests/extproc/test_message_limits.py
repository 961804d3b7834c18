"""``--grpc-max-recv-msg-size`` / ``--grpc-max-send-msg-size``: the per-message limits of the ext_proc
server, as Envoy meets them, on both transports."""

from __future__ import annotations

import grpc
import orjson
import pytest
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as pb_grpc

from epp.extproc.health import HealthService
from epp.extproc.server import PickerServer
from epp.extproc.servicer import ExtProcServicer
from epp.serve_flags import message_size
from tests.extproc.builders import make_director, request_body, request_headers, set_headers

BIG_CHUNK = orjson.dumps({"model": "m", "prompt": "y" * 8000})


async def _send(native: bool, recv: int, send: int = 0) -> grpc.StatusCode | str:
    server = PickerServer(ExtProcServicer(make_director("10.0.0.1:8000")), HealthService(lambda: True),
                          port=0, health_port=0, host="127.0.0.1", native=native,
                          grpc_max_recv_bytes=recv, grpc_max_send_bytes=send)
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            call = pb_grpc.ExternalProcessorStub(channel).Process(
                iter([request_headers(path="/v1/completions"), request_body(BIG_CHUNK, eos=True)]), timeout=10)
            try:
                replies = [reply async for reply in call]
            except grpc.aio.AioRpcError as err:
                return err.code()
            return set_headers(replies[0].request_headers.response)["x-gateway-destination-endpoint"]
    finally:
        await server.stop(0)


@pytest.mark.parametrize("native", [False, True], ids=["grpcio", "native"])
async def test_receive_limit_refuses_bigger_messages(native: bool) -> None:
    assert await _send(native, recv=message_size("4KiB")) is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert await _send(native, recv=message_size("10MiB")) == "10.0.0.1:8000"


async def test_send_limit_applies_to_replies() -> None:
    # the routing reply carries headers and metadata (~200 bytes): 64 bytes is too small to send it
    assert await _send(False, recv=0, send=64) is grpc.StatusCode.RESOURCE_EXHAUSTED


@pytest.mark.parametrize(("text", "size"), [("10MiB", 10 * 2**20), ("10Mi", 10 * 2**20), ("25MB", 25 * 10**6),
                                            ("4194304", 4194304), ("1k", 1000), ("1Gi", 2**30), ("0", 0)])
def test_sizes_read_as_upstream_does(text: str, size: int) -> None:
    assert message_size(text) == size
