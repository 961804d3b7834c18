"""Flow control through a real Envoy: the corpus's flow-control configs route to ``epp sim`` engines, and a
request held in the picker's queue is answered with a clear status when its deadline passes (on both
gRPC transports), while a full queue answers at once."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from epp.config import load_config_and_scheduler
from epp.demo.engines import EngineFleet, start_echo_engines, start_engines
from epp.envoy.stack import LocalGateway
from epp.flowcontrol.build import flow_control_settings
from tests.e2e.harness import chat, post

CONFIGS = Path(__file__).parent.parent / "flowcontrol" / "configs"  # copied from ../shared/upstream-epp-configs
MODEL = "sim-model"

# Every endpoint's metrics are stale after 1 ns, so the utilization detector reports saturation 1.0 and
# flow control holds every request (GIE's deprecated top-level saturationDetector section).
HELD = """apiVersion: llm-d.ai/v1alpha1
kind: EndpointPickerConfig
featureGates: [flowControl]
plugins:
- type: queue-scorer
saturationDetector:
  metricsStalenessThreshold: 1ns
flowControl:
  maxRequests: 1
  defaultRequestTTL: 1500ms
"""


@pytest.fixture(scope="module")
def sims() -> Iterator[EngineFleet]:
    fleet = start_engines(["s1", "s2"], MODEL)
    try:
        yield fleet
    finally:
        fleet.stop()


@pytest.mark.parametrize("config", sorted(CONFIGS.glob("*.yaml")), ids=lambda p: p.name)
async def test_corpus_flow_control_config_routes_through_envoy(config: Path, sims: EngineFleet, tmp_path: Path) -> None:
    loaded, _ = load_config_and_scheduler(config)
    if loaded.gate("flowControl"):
        assert flow_control_settings(loaded) is not None
    with LocalGateway(sims.upstreams, tmp_path, picker_args=["--config-file", str(config)]) as gateway:
        replies = await asyncio.gather(*(post(gateway.envoy, chat(MODEL, f"question {i}", max_tokens=4)) for i in range(6)))
    assert [r.status for r in replies] == [200] * 6, [r.body[:200] for r in replies]
    assert {r.json()["model"] for r in replies} == {MODEL}


@pytest.fixture(scope="module")
def echoes() -> Iterator[EngineFleet]:
    fleet = start_echo_engines(["e1"])
    try:
        yield fleet
    finally:
        fleet.stop()


@pytest.mark.parametrize("transport", ["grpcio", "native"])
async def test_queued_request_waits_then_gets_429_and_a_full_queue_answers_at_once(
    transport: str, echoes: EngineFleet, tmp_path: Path,
) -> None:
    args = ["--config-text", HELD, "--grpc-server", transport]
    with LocalGateway(echoes.upstreams, tmp_path, picker_args=args) as gateway:
        started = time.monotonic()
        held = asyncio.create_task(post(gateway.envoy, chat(content="waits")))
        await asyncio.sleep(0.5)  # the first request is in the queue (maxRequests: 1)
        full = await post(gateway.envoy, chat(content="no room"))
        assert full.status == 429 and full.headers["x-llm-d-request-dropped-reason"] == "rejected-saturated"
        assert time.monotonic() - started < 1.4  # refused at once, not after the TTL
        expired = await held
        waited = time.monotonic() - started
        async with aiohttp.ClientSession() as session:
            async with session.get(f"http://127.0.0.1:{gateway.picker.metrics_port}/metrics") as reply:
                metrics = await reply.text()
    assert expired.status == 429, expired.body
    assert expired.headers["x-llm-d-request-dropped-reason"] == "rejected-ttl-expired"
    assert expired.json()["error"]["code"] == "queue_ttl_expired"
    assert 1.5 <= waited < 10  # it waited in the picker for its whole TTL, then got an answer
    def series(name: str, label: str) -> list[str]:
        return [line for line in metrics.splitlines() if line.startswith(name + "{") and label in line]

    for outcome in ("EvictedTTL", "RejectedCapacity"):  # llm-d's flow-control series
        assert [line.rsplit(" ", 1)[1] for line in series("llm_d_epp_flow_control_requests_total", f'outcome="{outcome}"')] == ["1.0"]
    assert [line.rsplit(" ", 1)[1] for line in series("llm_d_epp_flow_control_queue_size", 'priority="0"')] == ["0.0"]
    assert "inference_extension_flow_control_request_queue_duration_seconds_bucket" in metrics
    log = (tmp_path / "epp.log").read_text()
    assert "reason=rejected-ttl-expired" in log and "reason=rejected-saturated" in log
