"""Kubernetes discovery against a fake kube-apiserver, through the real ``kubernetes_asyncio`` client.

Every test talks HTTP to ``tests/fakes/kube_apiserver.py`` with a generated kubeconfig; state changes
are API writes, faults are real connection drops, 410s and a server that goes down.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator, Callable

import pytest
from prometheus_client import CollectorRegistry

from epp.datastore import Datastore
from epp.discovery.kube_setup import KubernetesRuntime
from epp.discovery.pods import PoolSpec
from tests.conftest import wait_for
from tests.discovery.conftest import FAST, RecordingListener, names
from tests.fakes.kube_apiserver import FakeKubeApiServer, make_objective, make_pod, make_pool

Factory = Callable[..., KubernetesRuntime]


@pytest.fixture
async def runtime(kubeconfig: str) -> AsyncIterator[Factory]:
    started: list[KubernetesRuntime] = []

    def build(**kw: object) -> KubernetesRuntime:
        kw.setdefault("pool_name", "pool")
        datastore = kw.pop("datastore", None) or Datastore()
        rt = KubernetesRuntime(datastore, "default", kubeconfig=kubeconfig, timing=FAST, **kw)  # type: ignore[arg-type]
        started.append(rt)
        return rt

    yield build
    for rt in started:
        await rt.stop()


def pod_lists(server: FakeKubeApiServer) -> int:
    return sum(1 for m, p in server.requests if m == "GET" and p.startswith("/api/v1/") and "watch=true" not in p)


async def test_follows_pods_scaling_readiness_and_deletion(apiserver: FakeKubeApiServer, runtime: Factory) -> None:
    apiserver.put(make_pool("pool", {"app": "vllm"}, [8000, 8001]))
    apiserver.put(make_pod("a", "10.0.0.1", labels={"app": "vllm", "llm-d.ai/engine-type": "sglang"}))
    apiserver.put(make_pod("unready", "10.0.0.2", ready=False))
    apiserver.put(make_pod("no-ip", None))
    apiserver.put(make_pod("terminating", "10.0.0.4", deleting=True))
    apiserver.put(make_pod("other-app", "10.0.0.5", labels={"app": "db"}))
    apiserver.put(make_pod("elsewhere", "10.0.0.6", namespace="other"))
    rt = runtime()
    listener = RecordingListener()
    rt.datastore.add_listener(listener)
    await rt.start()
    await wait_for(lambda: rt.datastore.synced, what="first sync")
    assert rt.ready
    assert names(rt.datastore) == {"a-rank-0", "a-rank-1"}
    state = rt.datastore.get("a-rank-1")
    assert state is not None
    endpoint = state.endpoint
    assert (endpoint.address, endpoint.port, endpoint.namespace, endpoint.engine) == ("10.0.0.1", 8001, "default", "sglang")

    apiserver.put(make_pod("b", "10.0.0.7"))
    apiserver.put(make_pod("unready", "10.0.0.2", ready=True))
    await wait_for(lambda: names(rt.datastore) == {f"{p}-rank-{i}" for p in ("a", "b", "unready") for i in (0, 1)})

    apiserver.put(make_pod("a", "10.0.0.1", ready=False))
    apiserver.delete(make_pod("b"))
    await wait_for(lambda: names(rt.datastore) == {"unready-rank-0", "unready-rank-1"})
    assert sorted(listener.removed) == ["a-rank-0", "a-rank-1", "b-rank-0", "b-rank-1"]


async def test_active_ports_annotation_restricts_live_ports(apiserver: FakeKubeApiServer, runtime: Factory) -> None:
    apiserver.put(make_pool("pool", {"app": "vllm"}, [8000, 8001, 8002]))
    apiserver.put(make_pod("dp", "10.0.0.1", annotations={"llm-d.ai/active-ports": "8000, 8002"}))
    apiserver.put(make_pod("legacy", "10.0.0.2", annotations={"inference.networking.k8s.io/active-ports": "8001"}))
    rt = runtime()
    await rt.start()
    await wait_for(lambda: rt.datastore.synced)
    assert names(rt.datastore) == {"dp-rank-0", "dp-rank-2", "legacy-rank-1"}
    apiserver.put(make_pod("dp", "10.0.0.1", annotations={"llm-d.ai/active-ports": "8001"}))
    await wait_for(lambda: names(rt.datastore) == {"dp-rank-1", "legacy-rank-1"})


async def test_pool_target_ports_and_selector_changes(apiserver: FakeKubeApiServer, runtime: Factory) -> None:
    apiserver.put(make_pool("pool", {"app": "vllm"}, [8000]))
    apiserver.put(make_pod("a", "10.0.0.1"))
    apiserver.put(make_pod("g", "10.0.0.2", labels={"app": "vllm-green"}))
    rt = runtime()
    listener = RecordingListener()
    rt.datastore.add_listener(listener)
    await rt.start()
    await wait_for(lambda: names(rt.datastore) == {"a-rank-0"})

    apiserver.put(make_pool("pool", {"app": "vllm"}, [8000, 9000]))
    await wait_for(lambda: names(rt.datastore) == {"a-rank-0", "a-rank-1"})
    state = rt.datastore.get("a-rank-1")
    assert state is not None and state.endpoint.port == 9000
    assert listener.removed == []  # a port change re-uses the pods in hand, nothing churns

    apiserver.put(make_pool("pool", {"app": "vllm-green"}, [8000, 9000]))
    await wait_for(lambda: names(rt.datastore) == {"g-rank-0", "g-rank-1"})
    assert any("labelSelector=app%3Dvllm-green" in p and "watch=true" in p for _, p in apiserver.requests)
    apiserver.put(make_pod("a", "10.0.0.1", labels={"app": "vllm-green"}))
    await wait_for(lambda: names(rt.datastore) == {"g-rank-0", "g-rank-1", "a-rank-0", "a-rank-1"})


async def test_waits_for_pool_and_empties_when_pool_deleted(apiserver: FakeKubeApiServer, runtime: Factory) -> None:
    apiserver.put(make_pod("a", "10.0.0.1"))
    rt = runtime()
    await rt.start()
    # Discovery has listed the pool (absent) and is watching for it: only now is "not synced" meaningful.
    await wait_for(lambda: any("inferencepools" in path and "watch=true" in path for _, path in apiserver.requests),
                   what="the pool list and watch")
    assert not rt.datastore.synced and len(rt.datastore) == 0  # pods are ignored until the pool exists
    pool = apiserver.put(make_pool("pool", {"app": "vllm"}, [8000]))
    await wait_for(lambda: rt.datastore.synced and names(rt.datastore) == {"a-rank-0"})
    apiserver.delete(pool)
    await wait_for(lambda: len(rt.datastore) == 0, what="pool deletion to empty the datastore")


async def test_invalid_pool_update_keeps_last_good_spec(apiserver: FakeKubeApiServer, runtime: Factory) -> None:
    apiserver.put(make_pool("pool", {"app": "vllm"}, [8000]))
    apiserver.put(make_pod("a", "10.0.0.1"))
    rt = runtime()
    await rt.start()
    await wait_for(lambda: names(rt.datastore) == {"a-rank-0"})
    broken = make_pool("pool", {"app": "vllm"}, [8000])
    broken["spec"]["targetPorts"] = []
    apiserver.put(broken)
    apiserver.put(make_pod("b", "10.0.0.2"))
    await wait_for(lambda: names(rt.datastore) == {"a-rank-0", "b-rank-0"})


async def test_v1alpha2_pool_group(apiserver: FakeKubeApiServer, runtime: Factory) -> None:
    apiserver.put(make_pool("pool", {"app": "vllm"}, [8080], version="v1alpha2"))
    apiserver.put(make_pod("a", "10.0.0.1"))
    rt = runtime(pool_group="inference.networking.x-k8s.io")
    await rt.start()
    await wait_for(lambda: names(rt.datastore) == {"a-rank-0"})
    state = rt.datastore.get("a-rank-0")
    assert state is not None and state.endpoint.port == 8080


async def test_poolless_selector_mode(apiserver: FakeKubeApiServer, runtime: Factory) -> None:
    apiserver.put(make_pod("a", "10.0.0.1", labels={"role": "decode"}))
    apiserver.put(make_pod("b", "10.0.0.2", labels={"role": "prefill"}))
    rt = runtime(pool_name="", static_spec=PoolSpec({"role": "decode"}, (8000, 8001)))
    await rt.start()
    await wait_for(lambda: rt.datastore.synced)
    assert names(rt.datastore) == {"a-rank-0", "a-rank-1"}
    assert rt.objective_priority("anything") == 0
    apiserver.put(make_pod("c", "10.0.0.3", labels={"role": "decode"}))
    await wait_for(lambda: names(rt.datastore) == {"a-rank-0", "a-rank-1", "c-rank-0", "c-rank-1"})


async def test_watch_dropped_mid_stream_resumes_without_relist(apiserver: FakeKubeApiServer, runtime: Factory) -> None:
    apiserver.put(make_pool("pool", {"app": "vllm"}, [8000]))
    apiserver.put(make_pod("a", "10.0.0.1"))
    rt = runtime()
    listener = RecordingListener()
    rt.datastore.add_listener(listener)
    await rt.start()
    await wait_for(lambda: names(rt.datastore) == {"a-rank-0"})
    await asyncio.sleep(0.3)  # let the pod watch live for a while and receive bookmarks
    lists = pod_lists(apiserver)
    for i in range(3):
        apiserver.drop_watches()
        apiserver.put(make_pod(f"n{i}", f"10.0.1.{i}"))  # written while the client reconnects
        await wait_for(lambda i=i: f"n{i}-rank-0" in names(rt.datastore))
        await asyncio.sleep(0.1)
    assert pod_lists(apiserver) == lists  # resumed from the last resourceVersion each time
    assert listener.removed == []


@pytest.mark.parametrize("gone_mode", ["event", "http"])
async def test_410_gone_relists_and_touches_only_changes(
    apiserver: FakeKubeApiServer, runtime: Factory, gone_mode: str
) -> None:
    apiserver.gone_mode = gone_mode
    apiserver.put(make_pool("pool", {"app": "vllm"}, [8000]))
    for i in range(3):
        apiserver.put(make_pod(f"p{i}", f"10.0.0.{i}"))
    rt = runtime()
    listener = RecordingListener()
    rt.datastore.add_listener(listener)
    await rt.start()
    await wait_for(lambda: len(rt.datastore) == 3)
    lists = pod_lists(apiserver)
    apiserver.drop_watches()
    apiserver.delete(make_pod("p0"))
    apiserver.put(make_pod("p3", "10.0.0.3"))
    apiserver.compact()  # the client's resourceVersion is now too old
    await wait_for(lambda: names(rt.datastore) == {"p1-rank-0", "p2-rank-0", "p3-rank-0"})
    assert pod_lists(apiserver) > lists
    assert listener.removed == ["p0-rank-0"]  # the relist replaced only what changed
    apiserver.put(make_pod("p4", "10.0.0.4"))  # and the new watch continues after the relist
    await wait_for(lambda: "p4-rank-0" in names(rt.datastore))


async def test_api_server_down_keeps_last_known_endpoints(apiserver: FakeKubeApiServer, runtime: Factory) -> None:
    """Down for 3 s here; the client retries with capped backoff, so 30 s behaves the same, just longer."""
    registry = CollectorRegistry()
    apiserver.put(make_pool("pool", {"app": "vllm"}, [8000, 8001]))
    apiserver.put(make_pod("a", "10.0.0.1"))
    apiserver.put(make_pod("b", "10.0.0.2"))
    rt = runtime(registry=registry)
    await rt.start()
    await wait_for(lambda: len(rt.datastore) == 4)
    before = names(rt.datastore)

    await apiserver.stop()
    apiserver.put(make_pod("b", "10.0.0.2", ready=False))  # changes while the API is unreachable to us
    apiserver.put(make_pod("c", "10.0.0.3"))
    loop = asyncio.get_running_loop()
    down_until = loop.time() + 3.0
    while loop.time() < down_until:
        assert names(rt.datastore) == before, "an outage must never shrink the pool"
        assert rt.ready
        await asyncio.sleep(0.1)
    assert registry.get_sample_value("epp_discovery_api_reachable", {"resource": "pods"}) == 0

    await apiserver.start()
    await wait_for(lambda: names(rt.datastore) == {"a-rank-0", "a-rank-1", "c-rank-0", "c-rank-1"}, timeout=15)
    await wait_for(lambda: registry.get_sample_value("epp_discovery_api_reachable", {"resource": "pods"}) == 1)


async def test_objective_priorities(apiserver: FakeKubeApiServer, runtime: Factory) -> None:
    apiserver.put(make_pool("pool", {"app": "vllm"}, [8000]))
    apiserver.put(make_objective("critical", "pool", 10))
    apiserver.put(make_objective("batch", "pool", -5, group="inference.networking.x-k8s.io"))
    apiserver.put(make_objective("both", "pool", 3))
    apiserver.put(make_objective("both", "pool", -3, group="inference.networking.x-k8s.io"))
    apiserver.put(make_objective("unset", "pool", None))
    apiserver.put(make_objective("not-ours", "other-pool", 7))
    rt = runtime()
    await rt.start()
    await wait_for(lambda: rt.objective_priority("critical") == 10 and rt.objective_priority("batch") == -5)
    assert rt.objective_priority("both") == 3  # llm-d.ai wins over the older x-k8s.io group
    assert rt.objective_priority("unset") == 0
    assert rt.objective_priority("not-ours") == 0
    assert rt.objective_priority("unknown") == 0
    apiserver.put(make_objective("critical", "pool", 20))
    await wait_for(lambda: rt.objective_priority("critical") == 20)
    apiserver.delete(make_objective("both", "pool", 3))
    await wait_for(lambda: rt.objective_priority("both") == -3)


async def test_objective_crd_absent_is_tolerated(apiserver: FakeKubeApiServer, runtime: Factory) -> None:
    for group in ("llm-d.ai", "inference.networking.x-k8s.io"):
        apiserver.serve(group, "v1alpha2", "inferenceobjectives", served=False)
    apiserver.put(make_pool("pool", {"app": "vllm"}, [8000]))
    apiserver.put(make_pod("a", "10.0.0.1"))
    rt = runtime(objective_timing=FAST)
    await rt.start()
    await wait_for(lambda: rt.datastore.synced)
    assert rt.objective_priority("critical") == 0
    apiserver.serve("llm-d.ai", "v1alpha2", "inferenceobjectives")  # the CRD gets installed later
    apiserver.put(make_objective("critical", "pool", 9))
    await wait_for(lambda: rt.objective_priority("critical") == 9, what="objective after CRD install")


async def test_periodic_resync_relists_without_churn(apiserver: FakeKubeApiServer, kubeconfig: str) -> None:
    apiserver.put(make_pool("pool", {"app": "vllm"}, [8000]))
    apiserver.put(make_pod("a", "10.0.0.1"))
    listener = RecordingListener()
    datastore = Datastore()
    datastore.add_listener(listener)
    timing = dataclasses.replace(FAST, resync_period=0.4)  # watches end at the resync deadline
    async with KubernetesRuntime(datastore, "default", pool_name="pool", kubeconfig=kubeconfig, timing=timing):
        await wait_for(lambda: datastore.synced)
        lists = pod_lists(apiserver)
        await wait_for(lambda: pod_lists(apiserver) >= lists + 2, what="two periodic relists")
        apiserver.put(make_pod("b", "10.0.0.2"))
        await wait_for(lambda: names(datastore) == {"a-rank-0", "b-rank-0"})
    assert listener.added == ["a-rank-0", "b-rank-0"] and listener.removed == []
