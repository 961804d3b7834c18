"""The router over real gRPC: an in-process grpc.aio server, and ``epp bbr`` as a child process."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import grpc
import orjson
import pytest
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as pb_grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from epp._util.proc import free_port, spawn
from epp.bbr.catalog import ModelCatalog, parse_models_flag
from epp.bbr.router import BASE_MODEL_HEADER, MODEL_HEADER, BodyRouter
from epp.bbr.stream import RouterStream
from epp.extproc.health import HealthService
from epp.extproc.server import PickerServer
from epp.extproc.servicer import StreamServicer
from tests.extproc.builders import BUFFERED, immediate, request_body, request_headers, set_headers

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def chat(model: str) -> bytes:
    return orjson.dumps({"model": model, "messages": [{"role": "user", "content": "hi"}]})


async def exchange(target: str, messages: list[pb.ProcessingRequest]) -> list[pb.ProcessingResponse]:
    async with grpc.aio.insecure_channel(target) as channel:
        call = pb_grpc.ExternalProcessorStub(channel).Process(iter(messages), timeout=10)
        return [reply async for reply in call]


def buffered(model: str) -> list[pb.ProcessingRequest]:
    return [request_headers(mode=BUFFERED), request_body(chat(model), eos=True)]


@pytest.fixture
async def server() -> AsyncIterator[PickerServer]:
    router = BodyRouter(ModelCatalog(parse_models_flag("llama,sql-lora=llama"), restricts=True))
    owned = PickerServer(StreamServicer(lambda: RouterStream(router, 4096)), HealthService(lambda: True),
                         port=0, health_port=0, host="127.0.0.1", max_message_bytes=4096)
    await owned.start()
    try:
        yield owned
    finally:
        await owned.stop(0)


async def test_concurrent_streams_each_get_their_own_answer(server: PickerServer) -> None:
    target = f"127.0.0.1:{server.port}"
    models = ["llama", "sql-lora", "nope"] * 5
    results = await asyncio.gather(*(exchange(target, buffered(m)) for m in models))
    for model, replies in zip(models, results, strict=True):
        if model == "nope":
            assert immediate(replies[-1])[0] == 404
        else:
            assert set_headers(replies[-1].request_body.response) == {MODEL_HEADER: model, BASE_MODEL_HEADER: "llama"}


async def test_protocol_violation_ends_only_that_stream(server: PickerServer) -> None:
    target = f"127.0.0.1:{server.port}"
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await exchange(target, [request_body(b"{}", eos=True)])
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "request_body received while awaiting request headers" in (info.value.details() or "")
    assert len(await exchange(target, buffered("llama"))) == 2


async def test_health_has_the_overall_service(server: PickerServer) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.health_port}") as channel:
        reply = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
    assert reply.status == SERVING


# -- the real command ----------------------------------------------------------------------------

@pytest.fixture
def models_file(tmp_path: Path) -> Path:
    path = tmp_path / "models.yaml"
    path.write_text("models:\n- baseModel: llama\n  adapters: [sql-lora]\n")
    return path


@pytest.fixture
def bbr_process(models_file: Path) -> Iterator[tuple[subprocess.Popen[str], int, int]]:
    grpc_port, health_port = free_port(), free_port()
    proc = spawn(
        [sys.executable, "-m", "epp", "bbr", f"--grpc-port={grpc_port}", f"--grpc-health-port={health_port}",
         "--bind-address=127.0.0.1", f"--models-file={models_file}", "--models=extra",
         "--models-reload-interval=50ms", "--drain-timeout=5s"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        yield proc, grpc_port, health_port
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=10)
        assert proc.stdout is not None
        proc.stdout.close()


async def health_status(port: int) -> int | None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        try:
            reply = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=1)
        except grpc.aio.AioRpcError:
            return None
    return int(reply.status)


async def wait_for(condition: Callable[[], Awaitable[bool]], what: str) -> None:
    for _ in range(200):
        if await condition():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


async def test_command_serves_reloads_its_models_file_and_stops_on_sigterm(
    bbr_process: tuple[subprocess.Popen[str], int, int], models_file: Path
) -> None:
    proc, grpc_port, health_port = bbr_process
    target = f"127.0.0.1:{grpc_port}"

    async def serving() -> bool:
        return bool(await health_status(health_port) == SERVING)

    await wait_for(serving, "SERVING")
    for model, base in (("sql-lora", "llama"), ("extra", "extra")):
        replies = await exchange(target, buffered(model))
        assert set_headers(replies[-1].request_body.response)[BASE_MODEL_HEADER] == base
    assert immediate((await exchange(target, buffered("qwen")))[-1])[0] == 404

    models_file.write_text("models:\n- baseModel: qwen\n")  # a ConfigMap update
    st = models_file.stat()
    os.utime(models_file, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))  # a distinct mtime

    async def qwen_known() -> bool:
        return bool((await exchange(target, buffered("qwen")))[-1].HasField("request_body"))

    await wait_for(qwen_known, "the reloaded models file")
    assert immediate((await exchange(target, buffered("sql-lora")))[-1])[0] == 404  # gone from the file
    assert (await exchange(target, buffered("extra")))[-1].HasField("request_body")  # --models stays

    proc.send_signal(signal.SIGTERM)
    assert await asyncio.to_thread(proc.wait, 20) == 0
    assert proc.stdout is not None
    log = proc.stdout.read()
    assert "models file reloaded: 2 base model(s), 0 adapter(s)" in log and "stopped" in log


@pytest.mark.parametrize(("extra", "message"), [
    (["--models-file=/nonexistent/models.yaml"], "cannot read models file"),
    (["--models=a=b,a=c"], "two base models"),
    (["--models==x"], "ADAPTER=BASE"),
    (["--max-body-bytes=0"], "--max-body-bytes must be positive"),
])
def test_command_refuses_bad_configuration(extra: list[str], message: str) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "epp", "bbr", f"--grpc-port={free_port()}", f"--grpc-health-port={free_port()}",
         "--bind-address=127.0.0.1", *extra],
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert proc.returncode == 2, proc.stderr
    assert message in proc.stderr
