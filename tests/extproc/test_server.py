"""A real picker server on 127.0.0.1 (native HTTP/2 transport and grpc.aio) driven by a real grpc ext_proc client."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import orjson
import pytest
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as pb_grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from epp.director import Director
from epp.extproc.health import HealthService
from epp.extproc.server import PickerServer
from epp.extproc.servicer import ExtProcServicer
from epp.extproc.tls import CERT_FILE, KEY_FILE, self_signed_pair, server_credentials, server_ssl_context
from tests.conftest import wait_for
from tests.extproc.builders import (
    BUFFERED,
    CHAT_BODY,
    chunked,
    immediate,
    make_director,
    metadata_destination,
    request_body,
    request_headers,
    response_body,
    response_headers,
    set_headers,
    streamed,
)

POOL = ("10.0.0.1:8000", "10.0.0.2:8000", "10.0.0.3:8000")
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


@dataclass
class Picker:
    server: PickerServer
    director: Director
    ready: dict[str, bool]

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.server.port}"


@pytest.fixture(params=[True, False], ids=["native", "grpcio"])
def native(request: pytest.FixtureRequest) -> bool:
    return bool(request.param)


def tls(native: bool, cert_path: str | None, reload: bool = False) -> ssl.SSLContext | grpc.ServerCredentials:
    return (server_ssl_context if native else server_credentials)(cert_path, reload)


async def start_picker(
    director: Director, credentials: grpc.ServerCredentials | ssl.SSLContext | None = None, native: bool = True
) -> Picker:
    ready = {"value": True}
    health = HealthService(lambda: ready["value"], poll_interval=0.02)
    server = PickerServer(ExtProcServicer(director, max_body_bytes=50_000), health, port=0, health_port=0,
                          host="127.0.0.1", credentials=credentials, max_message_bytes=50_000, native=native)
    await server.start()
    return Picker(server, director, ready)


@pytest.fixture
async def picker(native: bool) -> AsyncIterator[Picker]:
    p = await start_picker(make_director(*POOL), native=native)
    yield p
    await p.server.stop(0)


async def exchange(target: str, messages: list[pb.ProcessingRequest]) -> list[pb.ProcessingResponse]:
    async with grpc.aio.insecure_channel(target) as channel:
        call = pb_grpc.ExternalProcessorStub(channel).Process(iter(messages), timeout=10)
        return [reply async for reply in call]


async def test_duplex_multi_chunk_with_empty_final_chunk(picker: Picker) -> None:
    body = orjson.dumps({"model": "m", "messages": [{"role": "user", "content": "y" * 5000}]})
    replies = await exchange(picker.target, [request_headers(), *chunked(body, 1000, empty_final=True)])
    dest = set_headers(replies[0].request_headers.response)["x-gateway-destination-endpoint"]
    assert dest in POOL and metadata_destination(replies[0]) == dest
    assert streamed(replies[1:]) == (body, [True])


async def test_buffered_mode(picker: Picker) -> None:
    replies = await exchange(picker.target, [request_headers(mode=BUFFERED), request_body(CHAT_BODY, eos=True)])
    assert [r.WhichOneof("response") for r in replies] == ["request_headers", "request_body"]
    assert set_headers(replies[1].request_body.response)["x-gateway-destination-endpoint"] in POOL


async def test_header_only_get(picker: Picker) -> None:
    (reply,) = await exchange(picker.target, [request_headers("/v1/models", eos=True, method="GET")])
    assert set_headers(reply.request_headers.response)["x-gateway-destination-endpoint"] in POOL


async def test_subset_hint_restricts_the_pick(picker: Picker) -> None:
    for _ in range(5):
        replies = await exchange(picker.target, [request_headers(), request_body(CHAT_BODY, True, ["10.0.0.3:1"])])
        assert set_headers(replies[0].request_headers.response)["x-gateway-destination-endpoint"] == "10.0.0.3:8000"


@pytest.mark.parametrize(
    ("messages", "status"),
    [
        ([request_headers(), request_body(b'{"model": "m", ', eos=True)], 400),
        ([request_headers(), request_body(b'{"model": "\xc3\x28"}', eos=True)], 400),
        ([request_headers(), request_body(b'{"messages": []}', eos=True)], 400),
        ([request_headers(), request_body(b"x" * 40_000), request_body(b"x" * 40_000, eos=True)], 413),
        ([request_headers(), request_body(CHAT_BODY, eos=True, subset=[])], 503),
    ],
)
async def test_bad_input_gets_immediate_response_and_server_keeps_serving(
    picker: Picker, messages: list[pb.ProcessingRequest], status: int
) -> None:
    replies = await exchange(picker.target, messages)
    code, headers, payload = immediate(replies[0])
    assert code == status and headers["content-type"] == "application/json"
    assert set(payload["error"]) >= {"message", "type", "code"}
    good = await exchange(picker.target, [request_headers(), request_body(CHAT_BODY, eos=True)])
    assert good[0].HasField("request_headers")


async def test_empty_pool_is_503(native: bool) -> None:
    p = await start_picker(make_director(), native=native)
    try:
        replies = await exchange(p.target, [request_headers(), request_body(CHAT_BODY, eos=True)])
        code, headers, _ = immediate(replies[0])
        assert (code, headers["x-llm-d-request-dropped-reason"]) == (503, "rejected-no-endpoints")
    finally:
        await p.server.stop(0)


async def test_protocol_violation_ends_only_that_stream(picker: Picker) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await exchange(picker.target, [request_body(b"{}", eos=True)])
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "request_body received while awaiting request headers" in (info.value.details() or "")
    good = await exchange(picker.target, [request_headers(), request_body(CHAT_BODY, eos=True)])
    assert good[0].HasField("request_headers")


async def test_full_exchange_with_sse_response_counts_usage(picker: Picker) -> None:
    body = orjson.dumps({"model": "m", "prompt": "p", "stream": True})
    events = b'data: {"choices":[{"text":"x"}]}\n\ndata: {"usage":{"prompt_tokens":2,"completion_tokens":9}}\n\n'
    async with grpc.aio.insecure_channel(picker.target) as channel:
        call = pb_grpc.ExternalProcessorStub(channel).Process(timeout=10)
        await call.write(request_headers("/v1/completions"))
        await call.write(request_body(body, eos=True))
        assert (await call.read()).HasField("request_headers")
        assert streamed([await call.read()]) == (body, [True])
        await call.write(response_headers("text/event-stream"))
        assert (await call.read()).HasField("response_headers")
        for piece, eos in ((events[:30], False), (events[30:70], False), (events[70:], True)):
            await call.write(response_body(piece, eos))
            assert streamed([await call.read()], "response_body") == (piece, [eos])
        await call.done_writing()
        assert await call.read() == grpc.aio.EOF
    labels = {"model_name": "m", "target_model_name": "m"}
    reg = picker.director.telemetry.registry
    assert reg.get_sample_value("inference_objective_output_tokens_sum", labels) == 9
    assert all(s.inflight_requests == 0 for s in picker.director.datastore.endpoints())


async def test_grpcio_ends_the_call_once_the_response_has_ended() -> None:
    """On grpc.aio the picker closes the call with OK right after answering the response's last message,
    without waiting for Envoy to half-close (Envoy proceeds without the processor once it closes cleanly;
    waiting cost one more completion, ~2 thread wakeups per request); the request is released by then."""
    picker = await start_picker(make_director(*POOL), native=False)
    try:
        async with grpc.aio.insecure_channel(picker.target) as channel:
            call = pb_grpc.ExternalProcessorStub(channel).Process(timeout=10)
            await call.write(request_headers())
            await call.write(request_body(CHAT_BODY, eos=True))
            assert (await call.read()).HasField("request_headers")
            await call.read()
            await call.write(response_headers())
            assert (await call.read()).HasField("response_headers")
            await call.write(response_body(b'{"usage":{"prompt_tokens":3,"completion_tokens":2}}', True))
            assert streamed([await call.read()], "response_body")[1] == [True]
            assert await call.read() == grpc.aio.EOF  # no done_writing(): the server ended the call
            assert await call.code() == grpc.StatusCode.OK
        assert all(s.inflight_requests == 0 for s in picker.director.datastore.endpoints())
    finally:
        await picker.server.stop(0)


async def test_client_going_away_releases_inflight(picker: Picker) -> None:
    async with grpc.aio.insecure_channel(picker.target) as channel:
        call = pb_grpc.ExternalProcessorStub(channel).Process(timeout=10)
        await call.write(request_headers())
        await call.write(request_body(CHAT_BODY, eos=True))
        await call.read()
        assert sum(s.inflight_requests for s in picker.director.datastore.endpoints()) == 1
        call.cancel()
    # the server notices the cancellation asynchronously
    await wait_for(lambda: sum(s.inflight_requests for s in picker.director.datastore.endpoints()) == 0,
                   what="the cancelled stream's release")


async def test_failed_start_leaves_no_health_port_answering(monkeypatch: pytest.MonkeyPatch) -> None:
    made: list[grpc.aio.Server] = []
    real_server = grpc.aio.server

    def server(*args: object, **kwargs: object) -> grpc.aio.Server:
        made.append(real_server(*args, **kwargs))  # type: ignore[arg-type]
        if len(made) == 1:  # the ext_proc server: fail its start, as a broken bind or TLS setup would
            async def fail() -> None:
                raise RuntimeError("main server failed to start")
            made[0].start = fail  # type: ignore[method-assign]
        return made[-1]

    monkeypatch.setattr(grpc.aio, "server", server)
    picker = PickerServer(ExtProcServicer(make_director(*POOL)), HealthService(lambda: True), port=0, health_port=0,
                          host="127.0.0.1")
    with pytest.raises(RuntimeError, match="failed to start"):
        await picker.start()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{picker.health_port}") as channel:
        with pytest.raises(grpc.aio.AioRpcError):
            await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)


async def test_stop_keeps_serving_new_streams_during_the_drain_then_refuses_them(picker: Picker) -> None:
    hurry = asyncio.Event()
    stopping = asyncio.create_task(picker.server.stop(5, drain=600, hurry=hurry))
    async with grpc.aio.insecure_channel(f"127.0.0.1:{picker.server.health_port}") as hch:
        stub = health_pb2_grpc.HealthStub(hch)
        await wait_for(lambda: picker.server.health.draining)
        assert (await stub.Check(health_pb2.HealthCheckRequest(), timeout=5)).status == NOT_SERVING
        replies = await exchange(picker.target, [request_headers("/v1/models", eos=True, method="GET")])
        assert set_headers(replies[0].request_headers.response)["x-gateway-destination-endpoint"] in POOL
        assert not stopping.done()
        hurry.set()
        await asyncio.wait_for(stopping, 30)
    with pytest.raises(grpc.aio.AioRpcError):
        await exchange(picker.target, [request_headers("/v1/models", eos=True, method="GET")])


HEALTH_NAMES = ["", "liveness", "readiness", "inference-extension", "envoy.service.ext_proc.v3.ExternalProcessor",
                "anything-else"]


async def test_health_follows_readiness_for_every_name(picker: Picker) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{picker.server.health_port}") as channel:
        stub = health_pb2_grpc.HealthStub(channel)

        async def statuses() -> set[int]:
            return {(await stub.Check(health_pb2.HealthCheckRequest(service=n), timeout=10)).status for n in HEALTH_NAMES}

        assert await statuses() == {SERVING}
        watch = stub.Watch(health_pb2.HealthCheckRequest(service="readiness"), timeout=10)
        assert (await watch.read()).status == SERVING
        picker.ready["value"] = False
        assert await statuses() == {NOT_SERVING}
        assert (await watch.read()).status == NOT_SERVING
        picker.ready["value"] = True
        assert (await watch.read()).status == SERVING
        picker.server.health.drain()
        assert (await watch.read()).status == NOT_SERVING
        assert await statuses() == {NOT_SERVING}
        watch.cancel()


async def test_health_on_main_port_only_when_asked(native: bool) -> None:
    director = make_director(*POOL)
    health = HealthService(lambda: True)
    servers = [PickerServer(ExtProcServicer(director), health, port=0, health_port=0, host="127.0.0.1",
                            health_on_main_port=flag, native=native) for flag in (False, True)]
    for s in servers:
        await s.start()
    try:
        codes = []
        for s in servers:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{s.port}") as channel:
                try:
                    await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
                    codes.append(grpc.StatusCode.OK)
                except grpc.aio.AioRpcError as exc:
                    codes.append(exc.code())
        assert codes == [grpc.StatusCode.UNIMPLEMENTED, grpc.StatusCode.OK]
    finally:
        for s in servers:
            await s.stop(0)


async def tls_exchange(port: int, root_cert: bytes) -> list[pb.ProcessingResponse]:
    creds = grpc.ssl_channel_credentials(root_certificates=root_cert)
    options = [("grpc.ssl_target_name_override", "localhost")]
    async with grpc.aio.secure_channel(f"127.0.0.1:{port}", creds, options=options) as channel:
        messages = iter([request_headers("/x", eos=True, method="GET")])
        call = pb_grpc.ExternalProcessorStub(channel).Process(messages, timeout=10)
        return [r async for r in call]


async def test_tls_with_generated_certificate(native: bool) -> None:
    p = await start_picker(make_director(*POOL), tls(native, None), native=native)
    try:
        # off the loop: the native server runs on this very event loop
        pem = (await asyncio.to_thread(ssl.get_server_certificate, ("127.0.0.1", p.server.port))).encode()
        assert len(await tls_exchange(p.server.port, pem)) == 1
        with pytest.raises(grpc.aio.AioRpcError):  # plaintext clients are refused
            await exchange(p.target, [request_headers("/x", eos=True, method="GET")])
    finally:
        await p.server.stop(0)


def write_pair(directory: Path) -> bytes:
    key, cert = self_signed_pair()
    (directory / KEY_FILE).write_bytes(key)
    (directory / CERT_FILE).write_bytes(cert)
    return cert


@pytest.mark.parametrize("reload", [False, True])
async def test_tls_with_provided_certificate_and_reload(tmp_path: Path, reload: bool, native: bool) -> None:
    first = write_pair(tmp_path)
    p = await start_picker(make_director(*POOL), tls(native, str(tmp_path), reload), native=native)
    try:
        assert len(await tls_exchange(p.server.port, first)) == 1
        second = write_pair(tmp_path)
        trusted, refused = (second, first) if reload else (first, second)
        assert len(await tls_exchange(p.server.port, trusted)) == 1
        with pytest.raises(grpc.aio.AioRpcError):
            await tls_exchange(p.server.port, refused)
    finally:
        await p.server.stop(0)


def test_missing_cert_files_are_a_clear_error(tmp_path: Path, native: bool) -> None:
    with pytest.raises(OSError, match="tls.crt"):
        tls(native, str(tmp_path))


async def test_health_with_leader_election(native: bool) -> None:
    ready = {"value": False}
    health = HealthService(lambda: ready["value"], leader_election=True)
    server = PickerServer(ExtProcServicer(make_director(*POOL)), health, port=0, health_port=0, host="127.0.0.1",
                          native=native, health_on_main_port=True)
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as main_channel:  # --health-checking
            with pytest.raises(grpc.aio.AioRpcError) as on_main:
                await health_pb2_grpc.HealthStub(main_channel).Check(health_pb2.HealthCheckRequest(service="x"), timeout=10)
            assert on_main.value.code() is grpc.StatusCode.NOT_FOUND
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.health_port}") as channel:
            stub = health_pb2_grpc.HealthStub(channel)

            async def status(name: str) -> int:
                return (await stub.Check(health_pb2.HealthCheckRequest(service=name), timeout=10)).status

            assert [await status(n) for n in ("liveness", "readiness", "inference-extension")] == [
                SERVING, NOT_SERVING, NOT_SERVING,
            ]
            with pytest.raises(grpc.aio.AioRpcError) as unknown:  # upstream's health server: NOT_FOUND
                await status("other")
            assert unknown.value.code() is grpc.StatusCode.NOT_FOUND
            ready["value"] = True  # became leader
            assert [await status(n) for n in ("liveness", "readiness", "")] == [SERVING, SERVING, SERVING]
    finally:
        await server.stop(0)
