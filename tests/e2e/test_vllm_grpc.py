"""vLLM's gRPC API through Envoy: a gRPC client calls ``VllmEngine/Generate`` on the gateway, Envoy asks
``epp serve`` (llm-d-router's chart config for ``modelServers.protocol=grpc``, i.e. ``vllmgrpc-parser``)
which decodes the framed protobuf body and picks one of two gRPC model servers, reached over h2c."""

from __future__ import annotations

import asyncio
import urllib.request
from pathlib import Path

import grpc

from epp._util.proc import free_port
from epp.envoy.config import Upstream
from epp.envoy.stack import LocalGateway
from tests.config.corpus import CORPUS
from tests.conftest import wait_for

CONFIG = CORPUS / ("llm-d__llm-d-router__config__charts__routerlib__templates___config.yaml__"
                   "default-plugins.yaml__modelServers-protocol-grpc.yaml")
GENERATE = "/vllm.grpc.engine.VllmEngine/Generate"
# GenerateRequest{request_id: "r", text: "hi", sampling_params{max_tokens: 5}}, encoded from vLLM's field numbers
REQUEST = bytes.fromhex("0a0172" "1a026869" "22024005")
# GenerateResponse{complete{finish_reason: "stop", prompt_tokens: 2, completion_tokens: 1}}
REPLY = bytes.fromhex("120a" "120473746f70" "1802" "2001")


class GrpcEngine:
    """A stand-in vLLM gRPC server: answers Generate with one GenerateComplete and records what arrived."""

    def __init__(self) -> None:
        self.port = free_port()
        self.received: list[tuple[bytes, dict[str, str]]] = []
        self.server = grpc.aio.server()
        self.server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler("vllm.grpc.engine.VllmEngine", {
            "Generate": grpc.unary_stream_rpc_method_handler(self.generate),
        })])
        self.server.add_insecure_port(f"127.0.0.1:{self.port}")

    async def generate(self, request: bytes, context: grpc.aio.ServicerContext):  # type: ignore[no-untyped-def]
        self.received.append((request, dict(context.invocation_metadata() or ())))
        yield REPLY


def _metric(url: str, name: str) -> float:
    with urllib.request.urlopen(url, timeout=5) as reply:  # noqa: S310
        lines = [line for line in reply.read().decode().splitlines() if line.startswith(name)]
    return sum(float(line.rsplit(" ", 1)[1]) for line in lines)


async def test_generate_is_parsed_and_routed_to_a_grpc_engine(tmp_path: Path) -> None:
    engines = [GrpcEngine(), GrpcEngine()]
    for engine in engines:
        await engine.server.start()
    upstreams = [Upstream("127.0.0.1", e.port) for e in engines]
    gateway = LocalGateway(upstreams, tmp_path, picker_args=["--config-file", str(CONFIG)], pool_http2=True)
    await asyncio.to_thread(gateway.start)
    try:
        async with grpc.aio.insecure_channel(gateway.url.removeprefix("http://")) as channel:
            call = channel.unary_stream(GENERATE)
            for _ in range(4):
                replies = [reply async for reply in call(REQUEST, timeout=20)]
                assert replies == [REPLY]
            # a body that is no GenerateRequest is refused by epp's parser before any engine sees it
            try:
                _ = [reply async for reply in call(b"\xff\xff\xff", timeout=20)]
            except grpc.aio.AioRpcError as err:
                refused = err
            else:
                raise AssertionError("a corrupt GenerateRequest was routed")
            assert refused.code() is not grpc.StatusCode.OK
        # usage read from the gRPC response stream (GenerateComplete prompt 2, completion 1 per request)
        url = f"http://127.0.0.1:{gateway.picker.metrics_port}/metrics"
        await wait_for(lambda: _metric(url, "llm_d_epp_request_output_tokens_sum") == 4.0)
        assert _metric(url, "llm_d_epp_request_input_tokens_sum") == 8.0
        served = [(e, r) for e in engines for r in e.received]
        assert len(served) == 4
        for engine, (body, metadata) in served:
            assert body == REQUEST  # forwarded unchanged
            assert metadata["x-gateway-destination-endpoint"] == f"127.0.0.1:{engine.port}"
    finally:
        await asyncio.to_thread(gateway.stop)
        for engine in engines:
            await engine.server.stop(0)
