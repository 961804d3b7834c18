"""``epp serve`` with ``precise-prefix-cache-producer``: real engines publish KV events to the picker,
and ext_proc picks follow what each engine actually cached."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager

import aiohttp
import grpc
import orjson
import pytest
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as pb_grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families

from tests.extproc.builders import request_body, request_headers, set_headers
from tests.sim.conftest import LLM_D_TOPIC, run_sim
from tests.sim.helpers import MODEL, post
from tests.conftest import wait_for
from tests.test_app import free_port, health_is

pytestmark = pytest.mark.e2e

CONFIG = """apiVersion: llm-d.ai/v1alpha1
kind: EndpointPickerConfig
plugins:
- {{type: precise-prefix-cache-producer, name: kv, parameters: {{mode: bind, bindEndpoint: 'tcp://127.0.0.1:{port}',
   eventTimeout: 60s, resyncWindow: 0}}}}
- {{type: prefix-cache-scorer, parameters: {{prefixMatchInfoProducerName: kv}}}}
- {{type: max-score-picker}}
schedulingProfiles:
- name: default
  plugins:
  - {{pluginRef: prefix-cache-scorer}}
  - {{pluginRef: max-score-picker}}
"""


@pytest.fixture
def kv_port() -> int:
    return free_port()


@pytest.fixture
def engines(kv_port: int) -> Iterator[tuple[int, int]]:
    args = ("--kv-events-endpoint", f"tcp://127.0.0.1:{kv_port}", "--kv-events-topic", LLM_D_TOPIC, "--kv-cache-blocks", "256", "--time-scale", "0")
    with run_sim(*args) as a, run_sim(*args) as b:
        yield a.port, b.port


@contextmanager
def serve(*args: str) -> Iterator[tuple[subprocess.Popen[str], dict[str, int]]]:
    """``epp serve`` on free 127.0.0.1 ports with ``args``; stopped by PID, its output shown on failure."""
    ports = {"grpc": free_port(), "health": free_port(), "metrics": free_port()}
    proc = subprocess.Popen(
        [sys.executable, "-m", "epp", "serve", "--secure-serving=false", "--bind-address", "127.0.0.1",
         "--grpc-port", str(ports["grpc"]), "--grpc-health-port", str(ports["health"]),
         "--metrics-port", str(ports["metrics"]), "--drain-timeout", "0s", *args],  # stop at once: nothing to drain
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        yield proc, ports
    finally:
        if proc.poll() is None:
            proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        assert proc.stdout is not None
        print(proc.stdout.read())  # shown by pytest when the test failed
        proc.stdout.close()


@pytest.fixture
def picker(engines: tuple[int, int], kv_port: int) -> Iterator[tuple[subprocess.Popen[str], dict[str, int]]]:
    pool = ",".join(f"127.0.0.1:{p}" for p in engines)
    with serve("--static-endpoints", pool, "--config-text", CONFIG.format(port=kv_port)) as running:
        yield running


async def batches_received(metrics_port: int) -> float:
    text = await asyncio.to_thread(
        lambda: urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10).read().decode()
    )
    return sum(
        s.value for f in text_string_to_metric_families(text) for s in f.samples if s.name == "epp_kv_events_batches_total"
    )


async def pick(stub: pb_grpc.ExternalProcessorStub, prompt: str) -> str:
    call = stub.Process(timeout=20)
    await call.write(request_headers("/v1/completions"))
    await call.write(request_body(orjson.dumps({"model": MODEL, "prompt": prompt, "max_tokens": 1}), eos=True))
    head = await call.read()
    call.cancel()
    return set_headers(head.request_headers.response)["x-gateway-destination-endpoint"]


async def test_picks_follow_the_blocks_each_engine_reported(
    engines: tuple[int, int], picker: tuple[subprocess.Popen[str], dict[str, int]]
) -> None:
    proc, ports = picker
    async with grpc.aio.insecure_channel(f"127.0.0.1:{ports['health']}") as hch, \
            grpc.aio.insecure_channel(f"127.0.0.1:{ports['grpc']}") as ch, aiohttp.ClientSession() as http:  # fmt: skip
        health = health_pb2_grpc.HealthStub(hch)
        await wait_for(lambda: health_is(health, health_pb2.HealthCheckResponse.SERVING, proc), what="SERVING")
        stub = pb_grpc.ExternalProcessorStub(ch)
        for port in engines:  # until each engine's PUB socket reaches the picker's bound SUB
            for attempt in range(200):
                before = await batches_received(ports["metrics"])
                status, _ = await post(http, f"http://127.0.0.1:{port}/v1/completions",
                                       {"model": MODEL, "prompt": f"warm-up {attempt:04d} ".ljust(64, "."), "max_tokens": 1})  # fmt: skip
                assert status == 200
                await asyncio.sleep(0.05)
                if await batches_received(ports["metrics"]) > before:
                    break
            else:
                raise AssertionError(f"no KV events from the engine on port {port}")
        for port in engines:
            prompt = f"A document only the engine on {port} has read. " * 12
            status, _ = await post(http, f"http://127.0.0.1:{port}/v1/completions",
                                   {"model": MODEL, "prompt": prompt, "max_tokens": 1})  # fmt: skip
            assert status == 200
            for _ in range(100):  # until the picker has ingested the engine's events
                if await pick(stub, prompt) == f"127.0.0.1:{port}":
                    break
                await asyncio.sleep(0.05)
            assert [await pick(stub, prompt) for _ in range(4)] == [f"127.0.0.1:{port}"] * 4
