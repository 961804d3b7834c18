"""``epp serve`` with no config in front of two engines on one host that publish KV events the way
today's vLLM does (``epp sim`` defaults: type-tagged maps, ``[ts, events, rank]``, empty topic, a bound
PUB per engine). The issue's done-when: every batch decodes, the feeds go ``live``, and a repeated
prefix is found in the precise view (the pick follows the engine that cached it)."""

from __future__ import annotations

import asyncio
import subprocess
import urllib.request
from collections.abc import Iterator

import aiohttp
import grpc
import pytest
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as pb_grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import wait_for
from tests.kvevents.test_serve_precise import pick, serve
from tests.sim.conftest import SimProcess, run_sim
from tests.sim.helpers import MODEL, post
from tests.test_app import free_port, health_is

pytestmark = pytest.mark.e2e


@pytest.fixture
def engines() -> Iterator[list[tuple[SimProcess, int]]]:
    """Two engines on 127.0.0.1, each binding its own events port as vLLM's ``tcp://*:PORT`` does."""
    ports = [free_port(), free_port()]
    common = ("--kv-cache-blocks", "1024", "--time-scale", "0")
    with run_sim("--kv-events-endpoint", f"tcp://*:{ports[0]}", *common) as a, \
            run_sim("--kv-events-endpoint", f"tcp://*:{ports[1]}", *common) as b:  # fmt: skip
        yield [(a, ports[0]), (b, ports[1])]


@pytest.fixture
def picker(engines: list[tuple[SimProcess, int]]) -> Iterator[tuple[subprocess.Popen[str], dict[str, int]]]:
    pool = ",".join(f"127.0.0.1:{sim.port}@{events}" for sim, events in engines)  # two engines, one host
    with serve("--static-endpoints", pool) as running:  # and no config
        yield running


async def samples(metrics_port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = await asyncio.to_thread(
        lambda: urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10).read().decode()
    )
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text) for s in family.samples
    }  # fmt: skip


def batches(found: dict[tuple[str, tuple[tuple[str, str], ...]], float], result: str) -> float:
    return found.get(("epp_kv_events_batches_total", (("result", result),)), 0.0)


def feed(found: dict[tuple[str, tuple[tuple[str, str], ...]], float], endpoint: str) -> str | None:
    return next((dict(labels)["state"] for (name, labels), v in found.items()
                 if name == "epp_kv_events_feed_state" and dict(labels)["endpoint"] == endpoint and v == 1), None)  # fmt: skip


async def test_no_config_decodes_todays_vllm_events_goes_live_and_follows_repeated_prefixes(
    engines: list[tuple[SimProcess, int]], picker: tuple[subprocess.Popen[str], dict[str, int]]
) -> None:
    proc, ports = picker
    names = [f"127.0.0.1:{sim.port}" for sim, _ in engines]
    async with grpc.aio.insecure_channel(f"127.0.0.1:{ports['health']}") as hch, \
            grpc.aio.insecure_channel(f"127.0.0.1:{ports['grpc']}") as ch, aiohttp.ClientSession() as http:  # fmt: skip
        health = health_pb2_grpc.HealthStub(hch)
        await wait_for(lambda: health_is(health, health_pb2.HealthCheckResponse.SERVING, proc), timeout=30, what="SERVING")
        stub = pb_grpc.ExternalProcessorStub(ch)
        for (sim, _), name in zip(engines, names, strict=True):
            # ~2,000 tokens: the cached engine's predicted TTFT is clearly the lowest, not a near-tie
            prompt = f"A document only the engine on {sim.port} has read. " * 160
            for _ in range(100):  # until the picker's subscription to this engine delivers the blocks
                status, _ = await post(http, f"{sim.url}/v1/completions", {"model": MODEL, "prompt": prompt, "max_tokens": 1})
                assert status == 200
                await asyncio.sleep(0.05)
                if await pick(stub, prompt) == name:
                    break
            assert [await pick(stub, prompt) for _ in range(4)] == [name] * 4  # the repeated prefix is found
        found = await samples(ports["metrics"])
    assert [feed(found, name) for name in names] == ["live", "live"]
    assert batches(found, "in-order") + batches(found, "baseline") > 0
    assert batches(found, "undecodable") == 0 and batches(found, "unknown-endpoint") == 0
