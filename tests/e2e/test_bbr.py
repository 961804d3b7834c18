"""The body-based router in front of a real Envoy: its headers drive route matching to different upstreams.

Envoy runs ``epp bbr`` as its first HTTP filter and routes only on the router's headers (no catch-all), so a
request reaching the right echo engine proves the header was set before route matching and the route cache
was cleared. Both body modes the router supports are covered: BUFFERED (the deploy contract) and
FULL_DUPLEX_STREAMED (GIE's streaming router).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass

import aiohttp
import orjson
import pytest

from epp.demo.engines import EngineFleet, start_echo_engines
from epp.envoy.bbr import ModelRoute, RouterProcess, with_body_router
from epp.envoy.config import render
from epp.envoy.process import EnvoyProcess
from epp.envoy.stack import local_config
from tests.e2e.harness import Reply, chat, logged, post

MODEL, BASE, ENGINE = "x-gateway-model-name", "x-gateway-base-model-name", "x-gateway-engine"

MODELS_FILE = """
models:
- baseModel: model-a
- baseModel: model-b
  adapters: [lora-b]
- baseModel: model-c
  engine: vllm
- baseModel: model-c
  engine: sglang
"""


@dataclass
class Gateways:
    engines: EngineFleet
    envoys: dict[str, EnvoyProcess]


@pytest.fixture(scope="module")
def gateways(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateways]:
    workdir = tmp_path_factory.mktemp("bbr")
    (workdir / "models.yaml").write_text(MODELS_FILE)
    engines = start_echo_engines(("a", "b"))
    router = RouterProcess(extra_args=[f"--models-file={workdir / 'models.yaml'}"], log_path=workdir / "bbr.log")
    envoys: dict[str, EnvoyProcess] = {}
    try:
        router.start()
        a, b = engines.members["a"], engines.members["b"]
        routes = [
            ModelRoute({MODEL: "model-a"}, a),
            ModelRoute({BASE: "model-b"}, b),  # the base model and all its adapters
            ModelRoute({MODEL: "model-c", ENGINE: "sglang"}, a),
            ModelRoute({MODEL: "model-c"}, b),
        ]
        for variant in ("buffered", "streaming"):
            config = local_config(None, engines.upstreams, workdir / variant, strip_client_destination=False)
            bootstrap = with_body_router(render(config), router.address, routes, streaming=variant == "streaming")
            envoys[variant] = EnvoyProcess(config, workdir / variant, bootstrap=bootstrap)
            envoys[variant].start()
        yield Gateways(engines, envoys)
    finally:
        for envoy in envoys.values():
            envoy.stop()
        router.stop()
        engines.stop()


def served(reply: Reply) -> tuple[str, dict[str, str]]:
    """Which echo engine answered, and the routing headers it received."""
    assert reply.status == 200, reply.body
    engine = reply.json()["engine"]
    return engine["name"], {k: v for k, v in engine["headers"].items() if k.startswith("x-gateway-")}


ROUTING_CASES = [
    ("model-a", {}, {}, "a", {MODEL: "model-a", BASE: "model-a"}),
    ("model-b", {}, {}, "b", {MODEL: "model-b", BASE: "model-b"}),
    ("lora-b", {}, {}, "b", {MODEL: "lora-b", BASE: "model-b"}),
    ("model-c", {"owned_by": "sglang"}, {}, "a", {MODEL: "model-c", BASE: "model-c", ENGINE: "sglang"}),
    ("model-c", {}, {}, "b", {MODEL: "model-c", BASE: "model-c"}),
    # a client cannot choose its route by sending the headers itself
    ("model-b", {}, {MODEL: "model-a"}, "b", {MODEL: "model-b", BASE: "model-b"}),
    ("model-c", {}, {ENGINE: "sglang"}, "b", {MODEL: "model-c", BASE: "model-c"}),
]


@pytest.mark.parametrize("variant", ["buffered", "streaming"])
@pytest.mark.parametrize(("model", "fields", "sent", "engine", "headers"), ROUTING_CASES,
                         ids=[f"{c[0]}-{c[3]}-{i}" for i, c in enumerate(ROUTING_CASES)])
async def test_router_headers_select_the_route(
    gateways: Gateways, variant: str, model: str, fields: dict[str, str], sent: dict[str, str], engine: str,
    headers: dict[str, str],
) -> None:
    payload = orjson.dumps(chat(model, **fields))
    reply = await post(gateways.envoys[variant], payload, headers=sent)
    assert served(reply) == (engine, headers)
    assert reply.json()["engine"]["body_sha256"] == hashlib.sha256(payload).hexdigest()  # body untouched


def assert_openai_error(reply: Reply, status: int, code: str) -> None:
    assert reply.status == status, reply.body
    assert reply.headers["content-type"] == "application/json"
    error = reply.json()["error"]
    assert error["code"] == code and error["type"] == "invalid_request_error" and error["message"]


@pytest.mark.parametrize("variant", ["buffered", "streaming"])
async def test_unknown_model_is_an_openai_404_from_the_router(gateways: Gateways, variant: str) -> None:
    envoy = gateways.envoys[variant]
    reply = await post(envoy, chat("gpt-5"))
    assert_openai_error(reply, 404, "model_not_found")
    assert reply.json()["error"]["message"] == "The model `gpt-5` does not exist."
    entry = logged(envoy, [reply.request_id])[reply.request_id]
    assert entry.upstream is None and entry.details == "epp_model_not_found"


@pytest.mark.parametrize("variant", ["buffered", "streaming"])
@pytest.mark.parametrize(("body", "code"), [(b'{"model": "model-a", "messages": [', "invalid_json"),
                                            (b'{"messages": []}', "model_not_found")])
async def test_broken_body_is_an_openai_400(gateways: Gateways, variant: str, body: bytes, code: str) -> None:
    reply = await post(gateways.envoys[variant], body)
    assert_openai_error(reply, 400, code)
    assert logged(gateways.envoys[variant], [reply.request_id])[reply.request_id].upstream is None


async def test_request_without_model_matches_no_route(gateways: Gateways) -> None:
    """No body, no header: nothing for the model routes to match (and a client-sent header is dropped)."""
    envoy = gateways.envoys["buffered"]
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=20)) as session, \
            session.get(envoy.url + "/v1/models", headers={MODEL: "model-a"}) as reply:
        assert reply.status == 404
        assert reply.headers.get("content-type") != "application/json"  # Envoy's own route-not-found

