"""InferenceModelRewrite: rule parsing and precedence, weighted targets, and the watch through a fake
kube-apiserver (real ``kubernetes_asyncio`` client, real HTTP)."""

from __future__ import annotations

import collections
import random
from collections.abc import AsyncIterator
from typing import Any

import grpc
import orjson
import pytest
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as pb_grpc

from epp.datastore import Datastore
from epp.discovery.kube_setup import KubernetesRuntime
from epp.discovery.rewrites import ModelRewrites, RewriteTable, parse_rules
from epp.service import PickerService
from tests.conftest import wait_for
from tests.discovery.conftest import FAST
from tests.extproc.builders import request_body, request_headers, set_headers, streamed
from tests.fakes.kube_apiserver import FakeKubeApiServer, make_model_rewrite, make_pod, make_pool
from tests.test_service import serve_args

JSON = dict[str, Any]


def rule(*models: str, targets: list[JSON] | None = None) -> JSON:
    out: JSON = {"targets": targets if targets is not None else [{"modelRewrite": "t"}]}
    if models:
        out["matches"] = [{"model": {"type": "Exact", "value": m}} for m in models]
    return out


def obj(name: str, rules: list[JSON], created: str = "2026-01-01T00:00:00Z") -> JSON:
    return make_model_rewrite(name, "pool", rules, created=created)


def target_of(table: RewriteTable, model: str) -> str | None:
    found = table.rule_for(model)
    return None if found is None else found.name


def test_exact_beats_generic_and_oldest_wins() -> None:
    rules = [
        *parse_rules(obj("generic-old", [rule()], "2026-01-01T00:00:00Z")),
        *parse_rules(obj("exact-new", [rule("llama")], "2026-03-01T00:00:00Z")),
        *parse_rules(obj("exact-old", [rule("llama", "qwen")], "2026-02-01T00:00:00Z")),
        *parse_rules(obj("generic-new", [rule()], "2026-04-01T00:00:00Z")),
    ]
    table = RewriteTable(rules)
    assert target_of(table, "llama") == "exact-old"
    assert target_of(table, "qwen") == "exact-old"
    assert target_of(table, "anything") == "generic-old"
    assert target_of(RewriteTable(r for r in rules if not r.name.startswith("generic")), "anything") is None


def test_same_age_ties_break_by_group_then_name() -> None:
    same = "2026-01-01T00:00:00Z"
    table = RewriteTable([*parse_rules(obj("b", [rule("m")], same), group_rank=0),
                          *parse_rules(obj("a", [rule("m")], same), group_rank=1)])
    assert target_of(table, "m") == "b"  # llm-d.ai (rank 0) before the older x-k8s.io group
    table = RewriteTable([*parse_rules(obj("b", [rule("m")], same)), *parse_rules(obj("a", [rule("m")], same))])
    assert target_of(table, "m") == "a"


def test_unusable_rules_are_skipped_not_widened() -> None:
    rules = parse_rules(obj("bad", [
        {"matches": [{"model": {"type": "RegularExpression", "value": "m.*"}}], "targets": [{"modelRewrite": "t"}]},
        {"matches": [{"model": {"value": "m"}}], "targets": [{"weight": 5}]},  # no modelRewrite
        {"matches": [{"model": {"value": "m"}}]},
        "not-a-rule",
        {"matches": [{"model": {"value": "ok"}}], "targets": [{"modelRewrite": "t"}]},
    ]))
    assert [sorted(r.models) for r in rules] == [["ok"]]
    assert target_of(RewriteTable(rules), "m") is None  # the bad match did not become a generic rule


def counts(targets: list[JSON], n: int = 4000) -> collections.Counter[str]:
    rewrites = ModelRewrites(parse_rules(obj("r", [rule("m", targets=targets)])), rng=random.Random(3))
    out: collections.Counter[str] = collections.Counter()
    for _ in range(n):
        decision = rewrites.resolve("m")
        assert decision is not None and decision[0] == "r"
        out[decision[1]] += 1
    return out


def test_weighted_uniform_and_mixed_targets() -> None:
    weighted = counts([{"modelRewrite": "a", "weight": 90}, {"modelRewrite": "b", "weight": 10}])
    assert 3400 < weighted["a"] < 3800 and weighted["a"] + weighted["b"] == 4000
    uniform = counts([{"modelRewrite": "a"}, {"modelRewrite": "b"}])
    assert 1800 < uniform["a"] < 2200
    mixed = counts([{"modelRewrite": "a", "weight": 1}, {"modelRewrite": "b"}], n=200)
    assert mixed == {"a": 200}  # the reference never picks an unweighted target once any has a weight


@pytest.fixture
async def runtime(apiserver: FakeKubeApiServer, kubeconfig: str) -> AsyncIterator[KubernetesRuntime]:
    rt = KubernetesRuntime(Datastore(), "default", pool_name="pool", kubeconfig=kubeconfig, timing=FAST)
    try:
        yield rt
    finally:
        await rt.stop()


def target(rt: KubernetesRuntime, model: str) -> str | None:
    decision = rt.model_rewrite(model)
    return None if decision is None else f"{decision[0]}:{decision[1]}"


async def test_rewrites_follow_the_api_server(apiserver: FakeKubeApiServer, runtime: KubernetesRuntime) -> None:
    apiserver.put(make_pool("pool", {"app": "vllm"}, [8000]))
    apiserver.put(make_model_rewrite("canary", "pool", [rule("llama", targets=[{"modelRewrite": "llama-v2"}])]))
    apiserver.put(make_model_rewrite("old-group", "pool", [rule("qwen", targets=[{"modelRewrite": "qwen-b"}])],
                                     group="inference.networking.x-k8s.io"))
    apiserver.put(make_model_rewrite("other-pool", "elsewhere", [rule(targets=[{"modelRewrite": "x"}])]))
    await runtime.start()
    await wait_for(lambda: target(runtime, "llama") == "canary:llama-v2" and target(runtime, "qwen") == "old-group:qwen-b")
    assert target(runtime, "mistral") is None  # the generic rule belongs to another pool
    # a newer generic rule in our pool applies to other models only; exact rules keep precedence
    apiserver.put(make_model_rewrite("catch-all", "pool", [rule(targets=[{"modelRewrite": "default-model"}])]))
    await wait_for(lambda: target(runtime, "mistral") == "catch-all:default-model")
    assert target(runtime, "llama") == "canary:llama-v2"
    # an edit keeps the object's age; a deletion falls back to the generic rule
    apiserver.put(make_model_rewrite("canary", "pool", [rule("llama", targets=[{"modelRewrite": "llama-v3"}])]))
    await wait_for(lambda: target(runtime, "llama") == "canary:llama-v3")
    apiserver.delete(make_model_rewrite("canary", "pool", []))
    await wait_for(lambda: target(runtime, "llama") == "catch-all:default-model")
    # moving an object to another pool removes its rules
    apiserver.put(make_model_rewrite("catch-all", "elsewhere", [rule(targets=[{"modelRewrite": "default-model"}])]))
    await wait_for(lambda: target(runtime, "llama") is None)


async def test_rewrite_crd_absent_is_tolerated(apiserver: FakeKubeApiServer, kubeconfig: str) -> None:
    for group in ("llm-d.ai", "inference.networking.x-k8s.io"):
        apiserver.serve(group, "v1alpha2", "inferencemodelrewrites", served=False)
    apiserver.put(make_pool("pool", {"app": "vllm"}, [8000]))
    async with KubernetesRuntime(Datastore(), "default", pool_name="pool", kubeconfig=kubeconfig, timing=FAST,
                                 objective_timing=FAST) as rt:
        await wait_for(lambda: rt.datastore.synced)
        assert rt.model_rewrite("llama") is None
        apiserver.serve("llm-d.ai", "v1alpha2", "inferencemodelrewrites")  # the CRD gets installed later
        apiserver.put(make_model_rewrite("canary", "pool", [rule("llama", targets=[{"modelRewrite": "v2"}])]))
        await wait_for(lambda: rt.model_rewrite("llama") == ("canary", "v2"), what="rewrite after CRD install")


def test_pool_less_runtime_has_no_rewrites() -> None:
    rt = KubernetesRuntime(Datastore(), "default", pool_name="")
    assert rt.rewrite_watch is None and rt.model_rewrite("llama") is None


async def test_epp_serve_rewrites_the_model_over_grpc(apiserver: FakeKubeApiServer, kubeconfig: str) -> None:
    """``epp serve --pool-name`` end to end: the rule from the API server changes the body and header
    sent upstream over real gRPC, and the decision is counted."""
    apiserver.put(make_pool("pool", {"app": "vllm"}, [8000]))
    apiserver.put(make_pod("a", "10.0.0.1"))
    apiserver.put(make_model_rewrite("canary", "pool", [rule("llama", targets=[{"modelRewrite": "llama-v2"}])]))
    args = serve_args("--pool-name", "pool", "--pool-namespace", "default", "--kubeconfig", kubeconfig)
    async with PickerService(args) as picker:
        await wait_for(lambda: picker.source.model_rewriter is not None and picker.source.model_rewriter("llama")
                       is not None and picker.datastore.synced, what="pool and rewrite synced")
        body = orjson.dumps({"model": "llama", "messages": [{"role": "user", "content": "hi"}]})
        async with grpc.aio.insecure_channel(f"127.0.0.1:{picker.server.port}") as channel:
            call = pb_grpc.ExternalProcessorStub(channel).Process(timeout=10)
            await call.write(request_headers())
            await call.write(request_body(body, eos=True))
            head, forwarded = await call.read(), await call.read()
            await call.done_writing()
            await call.read()
        headers = set_headers(head.request_headers.response)
        assert headers["x-gateway-model-name"] == "llama-v2"
        assert headers["x-gateway-destination-endpoint"] == "10.0.0.1:8000"
        sent, _ = streamed([forwarded])
        assert orjson.loads(sent)["model"] == "llama-v2" and headers["content-length"] == str(len(sent))
        labels = {"model_rewrite_name": "canary", "model_name": "llama", "target_model": "llama-v2"}
        assert picker.telemetry.registry.get_sample_value("inference_extension_model_rewrite_decisions_total",
                                                          labels) == 1
