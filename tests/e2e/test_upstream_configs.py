"""Upstream configs end to end: client → real Envoy → ``epp serve --config-file <upstream config>`` →
``epp sim`` engines, for a representative set of the corpus configs epp loads (both chart defaults, the
deprecated spellings, the passthrough request handler, llm-d's optimized baseline); six, to stay within
the suite's time budget — every other loadable config is built by tests/config/test_upstream_corpus.py."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from epp.demo.engines import EngineFleet, start_engines
from epp.envoy.stack import LocalGateway
from tests.config.corpus import CORPUS, expectations
from tests.e2e.harness import chat, logged, post

MODEL = "meta-llama/Llama-3.1-8B-Instruct"
CONFIGS = (
    # GIE v1.5.0 chart default (inference.networking.x-k8s.io)
    "kubernetes-sigs__gateway-api-inference-extension__config__charts__epplib__templates___config.yaml__default-plugins.yaml__chart-defaults.yaml",
    # deprecated character blockSize
    "kubernetes-sigs__gateway-api-inference-extension__site-src__guides__troubleshooting.md__L112__custom-plugins.yaml",
    # deprecated top-level parser
    "kubernetes-sigs__gateway-api-inference-extension__test__integration__epp__testdata__default-config.yaml",
    # llm-d-router chart default
    "llm-d__llm-d-router__config__charts__routerlib__templates___config.yaml__default-plugins.yaml__chart-defaults.yaml",
    # passthrough-parser (payload-agnostic)
    "llm-d__llm-d-router__config__charts__routerlib__templates___config.yaml__payload-agnostic.yaml",
    # llm-d's optimized-baseline guide (the new llm-d default: prefix-cache-affinity-filter, token-load-scorer)
    "llm-d__llm-d__guides__optimized-baseline__router__optimized-baseline.values.yaml__optimized-baseline-plugins.yaml",
)


@pytest.fixture(scope="module")
def engines() -> Iterator[EngineFleet]:
    fleet = start_engines(("sim-a", "sim-b"), MODEL, extra_args=["--time-scale", "0.05"])
    try:
        yield fleet
    finally:
        fleet.stop()


def test_the_set_is_loadable_corpus_configs() -> None:
    table = expectations()
    for name in CONFIGS:
        assert (CORPUS / name).is_file() and name not in table.failures and name not in table.placeholders


@pytest.mark.parametrize("name", CONFIGS, ids=lambda n: n.rsplit("__", 2)[-2][:40] + "/" + n.rsplit("__", 1)[-1][:30])
def test_request_routes_through_envoy_with_the_upstream_config(
    name: str, engines: EngineFleet, tmp_path: Path,
) -> None:
    with LocalGateway(engines.upstreams, tmp_path, picker_args=["--config-file", str(CORPUS / name)]) as gateway:
        replies = asyncio.run(_send(gateway))
        for reply in replies:
            assert reply.status == 200, reply.body[:300]
        entries = logged(gateway.envoy, [r.request_id for r in replies])
        served = {entry.upstream for entry in entries.values()}
        assert served and all(engines.name_of(hostport) for hostport in served), served


async def _send(gateway: LocalGateway) -> list:  # type: ignore[type-arg]
    completion = {"model": MODEL, "prompt": "The capital of France is", "max_tokens": 4}
    return [
        await post(gateway.envoy, chat(MODEL, "hello there", max_tokens=4)),
        await post(gateway.envoy, completion, path="/v1/completions"),
    ]
