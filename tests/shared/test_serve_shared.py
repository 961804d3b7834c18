"""``epp serve --shared-state-url``: two pickers in-process on one real Valkey share their ledgers, seen
from inside after a request over real gRPC."""

from __future__ import annotations

import asyncio
import urllib.request

import grpc
import pytest
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as pb_grpc
from prometheus_client.parser import text_string_to_metric_families

from epp.scheduling.plugins.scorers.ttft_predictor import TTFTPredictorScorer
from epp.service import PickerService
from epp.shared.redis_state import RedisSharedState
from tests.conftest import wait_for
from tests.extproc.builders import request_body, request_headers
from tests.datalayer.test_shared_prefix import RedisServer, server  # noqa: F401 (fixture)
from tests.test_service import LONG_CHAT, route, serve_args

pytestmark = pytest.mark.e2e
POLICY = """\
apiVersion: llm-d.ai/v1alpha1
kind: EndpointPickerConfig
plugins:
- {type: approx-prefix-cache-producer}
- {type: ttft-predictor-scorer}
- {type: max-score-picker}
schedulingProfiles:
- name: default
  plugins: [{pluginRef: ttft-predictor-scorer}, {pluginRef: max-score-picker}]
"""


def picker(url: str, *extra: str) -> PickerService:
    return PickerService(serve_args("--static-endpoints", "127.0.0.1:40001,127.0.0.1:40002", "--config-text", POLICY,
                                    "--shared-state-url", url, "--shared-state-period", "20ms", *extra))


def scorer(service: PickerService) -> TTFTPredictorScorer:
    return next(p for p in service.scheduler.plugins if isinstance(p, TTFTPredictorScorer))


def metric(service: PickerService, name: str) -> float:
    text = urllib.request.urlopen(f"http://127.0.0.1:{service.metrics.port}/metrics", timeout=10).read().decode()
    return next(s.value for m in text_string_to_metric_families(text) for s in m.samples if s.name == name)


async def test_two_pickers_share_their_in_flight_requests(server: RedisServer) -> None:  # noqa: F811
    async with picker(server.url) as a, picker(server.url) as b:
        assert isinstance(a.shared_state, RedisSharedState) and a.shared_state.prefix == "epp:shared:default"
        await route(b.server.port)  # b creates its ledgers on its first pick (that stream ends: released)
        async with grpc.aio.insecure_channel(f"127.0.0.1:{a.server.port}") as channel:
            call = pb_grpc.ExternalProcessorStub(channel).Process(timeout=30)
            await call.write(request_headers())
            await call.write(request_body(LONG_CHAT, eos=True))
            await call.read()  # routed; the stream stays open: the request is in flight on a
            await call.read()
            [name] = [n for n, ledger in scorer(a).ledgers.items() if len(ledger)]

            def seen(requests: int) -> bool:
                ledger = scorer(b).ledgers.get(name)
                return ledger is not None and ledger.remote.requests == requests

            await wait_for(lambda: seen(1), timeout=10, what="b sees a's request")
            assert await asyncio.to_thread(metric, b, "epp_shared_state_connected") == 1
            assert await asyncio.to_thread(metric, b, "epp_shared_state_peers") == 1
            call.cancel()  # the client goes away: a releases the request, and b sees that too
        await wait_for(lambda: seen(0), timeout=10, what="b sees it released")


def test_bad_shared_state_flags_are_refused() -> None:
    with pytest.raises(ValueError, match="redis://"):
        picker("http://localhost:6379")
    with pytest.raises(ValueError, match="--shared-state-ttl"):
        picker("redis://127.0.0.1:1/0", "--shared-state-ttl", "30ms")
