"""DCGM and /v1/models sources against real HTTP servers on 127.0.0.1: attributes land on the right
endpoints, a bad page is a logged failure that leaves the last good value, and the extractors follow
llm-d's rules (max over the pod's GPUs / 100; the models' ids)."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from aiohttp import web

from epp.config import load_config, build_scheduler
from epp.datastore import Datastore, Endpoint
from epp.metrics.sources import AttributePoller, attribute_pollers
from epp.metrics.plugins.dcgm import DcgmExtractor
from epp.metrics.plugins.models import ModelsExtractor
from tests.conftest import wait_for

DATA = Path(__file__).parent / "data"
DCGM = (DATA / "dcgm.prom").read_text()
MODELS = (DATA / "vllm_models.json").read_text()


def test_dcgm_extractor_takes_the_pods_busiest_gpu() -> None:
    ex = DcgmExtractor()
    assert ex.extract(Endpoint("vllm-a-rank-0", "10.0.0.1", 8000), DCGM) == {"GPUUtilization": pytest.approx(0.82)}
    assert ex.extract(Endpoint("vllm-b-rank-0", "10.0.0.2", 8000), DCGM) == {"GPUUtilization": pytest.approx(0.12)}
    with pytest.raises(ValueError, match="no sample for pod"):
        ex.extract(Endpoint("vllm-c-rank-0", "10.0.0.3", 8000), DCGM)
    with pytest.raises(ValueError, match="not found"):
        ex.extract(Endpoint("vllm-a-rank-0", "10.0.0.1", 8000), "# nothing here\n")
    unlabelled = 'DCGM_FI_DEV_GPU_UTIL{gpu="0"} 55\n'
    assert ex.extract(Endpoint("10.0.0.9:8000", "10.0.0.9", 8000), unlabelled) == {"GPUUtilization": pytest.approx(0.55)}
    longer_name = 'DCGM_FI_DEV_GPU_UTIL_MAX{gpu="0"} 99\n' + unlabelled  # another family, not read
    assert ex.extract(Endpoint("10.0.0.9:8000", "10.0.0.9", 8000), longer_name) == {"GPUUtilization": pytest.approx(0.55)}
    with pytest.raises(ValueError, match="unparsable sample line"):
        ex.extract(Endpoint("10.0.0.9:8000", "10.0.0.9", 8000), 'DCGM_FI_DEV_GPU_UTIL{gpu="0" 55\n')


def test_models_extractor_reads_a_real_vllm_answer() -> None:
    got = ModelsExtractor().extract(Endpoint("e", "10.0.0.1", 8000), MODELS)
    assert got["model_ids"] == frozenset({"tiny-llama"})
    assert got["models"] == ({"id": "tiny-llama", "root": "<model folder>"},)
    for bad in ("not json", '{"data": 3}', '{"data": [{"object": "model"}]}'):
        with pytest.raises(ValueError):
            ModelsExtractor().extract(Endpoint("e", "10.0.0.1", 8000), bad)


class Page:
    def __init__(self, text: str) -> None:
        self.text = text
        self.hits = 0

    async def handle(self, request: web.Request) -> web.Response:
        self.hits += 1
        return web.Response(text=self.text, content_type="text/plain")


@asynccontextmanager
async def serving(path: str, page: Page) -> AsyncIterator[int]:
    app = web.Application()
    app.router.add_get(path, page.handle)
    runner = web.AppRunner(app, shutdown_timeout=1.0)
    await runner.setup()
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    await web.SockSite(runner, sock).start()
    try:
        yield port
    finally:
        await runner.cleanup()


def config_text(port: int) -> str:
    return ("apiVersion: llm-d.ai/v1alpha1\nkind: EndpointPickerConfig\nplugins:\n"
            f"- {{type: dcgm-data-source, name: dcgm-source, parameters: {{port: {port}, interval: 50ms}}}}\n"
            "- {type: dcgm-extractor}\n"
            "- {type: models-data-source, parameters: {interval: 50ms}}\n- {type: models-data-extractor}\n"
            "dataLayer:\n  sources:\n  - pluginRef: dcgm-source\n    extractors: [{pluginRef: dcgm-extractor}]\n")


async def test_pollers_write_attributes_and_keep_the_last_good_value_on_garbage(tmp_path: Path) -> None:
    dcgm, models = Page(DCGM), Page(MODELS)
    async with serving("/metrics", dcgm) as dcgm_port, serving("/v1/models", models) as models_port:
        path = tmp_path / "epp.yaml"
        path.write_text(config_text(dcgm_port))
        config = load_config(path)
        scheduler = build_scheduler(config)
        ds = Datastore()
        ds.upsert(Endpoint("vllm-a-rank-0", "127.0.0.1", models_port))
        pollers = attribute_pollers(config.source_extractors(), scheduler.plugins, ds, interval=0.05)
        assert sorted(p.source.typed_name.name for p in pollers) == ["dcgm-source", "models-data-source"]
        assert all(isinstance(p, AttributePoller) for p in pollers)
        for p in pollers:
            await p.start()
        try:
            state = ds.get("vllm-a-rank-0")
            assert state is not None
            await wait_for(lambda: "GPUUtilization" in state.attributes and "model_ids" in state.attributes)
            assert state.attributes["GPUUtilization"] == pytest.approx(0.82)
            assert state.attributes["model_ids"] == frozenset({"tiny-llama"})
            dcgm.text = "garbage\n"
            seen = dcgm.hits
            await wait_for(lambda: dcgm.hits > seen + 2)
            assert state.attributes["GPUUtilization"] == pytest.approx(0.82)
            dcgm.text = DCGM.replace("} 82", "} 20")
            await wait_for(lambda: state.attributes["GPUUtilization"] == pytest.approx(0.37))
        finally:
            for p in pollers:
                await p.stop()


async def test_a_missing_ca_file_for_https_scraping_is_named_at_start(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-ca.crt"
    path = tmp_path / "epp.yaml"
    path.write_text("apiVersion: llm-d.ai/v1alpha1\nkind: EndpointPickerConfig\nplugins:\n"
                    f"- {{type: dcgm-data-source, name: dcgm-source, parameters: {{scheme: https, caCertPath: {missing}}}}}\n"
                    "- {type: dcgm-extractor}\n"
                    "dataLayer:\n  sources:\n  - pluginRef: dcgm-source\n    extractors: [{pluginRef: dcgm-extractor}]\n")
    config = load_config(path)
    pollers = attribute_pollers(config.source_extractors(), build_scheduler(config).plugins, Datastore(), interval=0.05)
    with pytest.raises(OSError, match=f"dcgm-source.*caCertPath '{missing}'"):
        await pollers[0].start()
