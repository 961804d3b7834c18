"""``PickerService`` in-process: the parts ``epp serve`` wires together, observed from inside while it serves."""

from __future__ import annotations

import asyncio
import urllib.request
from pathlib import Path

import grpc
import orjson
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families
from envoy.extensions.filters.http.ext_proc.v3.processing_mode_pb2 import ProcessingMode
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as pb_grpc

from epp.cli import build_parser
from epp.discovery.sources import SourceError
from epp.scheduling.prefix.index import BlockIndex
from epp.scheduling.prefix.precise_producer import PrecisePrefixCacheProducer
from epp.serve_config import ServeConfig
from epp.service import PickerService
from tests.conftest import wait_for
from tests.extproc.builders import request_body, request_headers, set_headers
from tests.metrics.test_sources import DCGM, Page, serving

# Nothing listens on these: metrics scrapes fail (endpoints go stale), which scheduling tolerates.
POOL = {"a": 1, "b": 2, "c": 3}
# Long enough for several prefix-index blocks (16 tokens of 4 bytes each).
LONG_CHAT = orjson.dumps({"model": "m", "messages": [{"role": "user", "content": "a long shared prompt " * 40}]})


def write_endpoints(path: Path, names: list[str]) -> None:
    """An endpoints file; written to a temp name and renamed so the watcher never sees half a file."""
    doc = {"endpoints": [{"name": n, "address": "127.0.0.1", "port": str(40000 + POOL[n])} for n in names]}
    tmp = path.with_suffix(".tmp")
    tmp.write_text(yaml.safe_dump(doc))
    tmp.replace(path)


def serve_args(*extra: str) -> ServeConfig:
    """The configuration of ``epp serve`` with these flags, on loopback and free ports, in plaintext."""
    return ServeConfig.from_args(build_parser().parse_args([
        "serve", "--secure-serving=false", "--bind-address", "127.0.0.1", "--grpc-port", "0",
        "--grpc-health-port", "0", "--metrics-port", "0", *extra,
    ]))


async def route(port: int) -> str:
    """One chat request over real gRPC from a gateway that sends epp no response phase (response body
    mode NONE: the end of the stream says nothing of the outcome); returns the destination epp named."""
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        call = pb_grpc.ExternalProcessorStub(channel).Process(timeout=10)
        await call.write(request_headers(response_mode=ProcessingMode.NONE))
        await call.write(request_body(LONG_CHAT, eos=True))
        head = await call.read()
        await call.read()  # the body
        await call.done_writing()
        assert await call.read() == grpc.aio.EOF
    return set_headers(head.request_headers.response)["x-gateway-destination-endpoint"]


async def test_endpoint_removed_from_a_watched_file_leaves_the_prefix_index(tmp_path: Path) -> None:
    path = tmp_path / "endpoints.yaml"
    write_endpoints(path, ["a", "b"])
    async with PickerService(serve_args("--endpoints-file", str(path))) as picker:  # watched by default
        producer = next(p for p in picker.scheduler.plugins if isinstance(p, PrecisePrefixCacheProducer))
        learned = producer.precise.fallback  # no engine publishes KV events here: the picks are the view
        assert isinstance(learned, BlockIndex)
        destination = await route(picker.server.port)
        served = next(n for n, port in POOL.items() if destination == f"127.0.0.1:{40000 + port}")
        assert learned.entries() > 0  # the pick recorded the prompt for the chosen endpoint

        write_endpoints(path, [n for n in ("a", "b", "c") if n != served])
        for _ in range(200):  # the watcher polls once a second
            if picker.datastore.get(served) is None:
                break
            await asyncio.sleep(0.05)
        assert picker.datastore.get(served) is None and picker.datastore.get("c") is not None
        assert learned.entries() == 0  # purged with the endpoint, not left to age out
        assert await route(picker.server.port) != destination


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ([], "no endpoint source"),
        (["--static-endpoints", "127.0.0.1:1", "--endpoints-file", "x.yaml"], "--static-endpoints, --endpoints-file"),
    ],
)
def test_source_errors_name_the_flags(extra: list[str], message: str) -> None:
    with pytest.raises(SourceError, match=message):
        PickerService(serve_args(*extra))


async def test_plugin_and_prefix_metrics_are_served_after_picks_over_grpc() -> None:
    """Two identical chats through the real gRPC path, then a scrape of the metrics port: every plugin
    call was timed and the second pick found the whole prompt on the endpoint the first one chose."""
    async with PickerService(serve_args("--static-endpoints", "127.0.0.1:40001,127.0.0.1:40002",
                                        "--config-file", "gie-default")) as picker:
        first, second = await route(picker.server.port), await route(picker.server.port)
        url = f"http://127.0.0.1:{picker.metrics.port}/metrics"
        text = await asyncio.to_thread(lambda: urllib.request.urlopen(url, timeout=10).read().decode())
    assert first == second
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for m in text_string_to_metric_families(text) for s in m.samples}
    scorer = (("extension_point", "Scorer"), ("plugin_name", "prefix-cache-scorer"), ("plugin_type", "prefix-cache-scorer"))
    for family in ("inference_extension_plugin_duration_seconds", "llm_d_epp_plugin_duration_seconds"):
        assert samples[(f"{family}_count", scorer)] == 2
    assert samples[("inference_extension_prefix_indexer_hit_ratio_count", ())] == 2
    assert samples[("inference_extension_prefix_indexer_hit_ratio_sum", ())] == 1.0  # 0 cold, then 1
    assert samples[("inference_extension_prefix_indexer_size", ())] > 0


async def test_llm_d_default_sticks_a_repeated_prompt_over_grpc() -> None:
    async with PickerService(serve_args("--static-endpoints", "127.0.0.1:40001,127.0.0.1:40002",
                                        "--config-file", "llm-d-default")) as picker:
        first = await route(picker.server.port)
        assert [await route(picker.server.port) for _ in range(3)] == [first] * 3


async def test_a_dcgm_source_in_the_config_fills_gpu_utilization_while_serving(tmp_path: Path) -> None:
    page = Page(DCGM.replace('pod="vllm-a"', 'pod="127.0.0.1:40001"'))
    async with serving("/metrics", page) as dcgm_port:
        config = tmp_path / "epp.yaml"
        config.write_text(
            "apiVersion: llm-d.ai/v1alpha1\nkind: EndpointPickerConfig\nplugins:\n"
            f"- {{type: dcgm-data-source, name: dcgm, parameters: {{port: {dcgm_port}, interval: 50ms}}}}\n"
            "- {type: dcgm-extractor}\n- {type: random-picker}\n")
        async with PickerService(serve_args("--static-endpoints", "127.0.0.1:40001", "--config-file", str(config))) as picker:
            state = picker.datastore.get("127.0.0.1:40001")
            assert state is not None
            await wait_for(lambda: "GPUUtilization" in state.attributes)
            assert state.attributes["GPUUtilization"] == pytest.approx(0.82)
