"""The pure rules: pool spec parsing, pod liveness, active ports, selector strings."""

from __future__ import annotations

from typing import Any

import pytest

from epp.discovery.pods import (
    PoolSpecError,
    parse_selector,
    pod_endpoints,
    pod_info,
    pool_spec_from_object,
    validate_ports,
)
from tests.fakes.kube_apiserver import make_pod, make_pool


@pytest.mark.parametrize(
    ("pod", "ports", "expected"),
    [
        (make_pod("a"), (8000,), ["a-rank-0:8000"]),
        (make_pod("a", ready=False), (8000,), []),
        (make_pod("a", None), (8000,), []),
        (make_pod("a", deleting=True), (8000,), []),
        (make_pod("a"), (8000, 8001), ["a-rank-0:8000", "a-rank-1:8001"]),
        (make_pod("a", annotations={"llm-d.ai/active-ports": "8001"}), (8000, 8001), ["a-rank-1:8001"]),
        (make_pod("a", annotations={"llm-d.ai/active-ports": "x, 8001 ,9999"}), (8000, 8001), ["a-rank-1:8001"]),
        (make_pod("a", annotations={"llm-d.ai/active-ports": ""}), (8000,), []),
        (make_pod("a", annotations={"inference.networking.k8s.io/active-ports": "8000"}), (8000, 8001),
         ["a-rank-0:8000"]),
        (make_pod("a", annotations={"llm-d.ai/active-ports": "8001",
                                    "inference.networking.k8s.io/active-ports": "8000"}), (8000, 8001),
         ["a-rank-1:8001"]),
        ({"metadata": {"name": "bare"}}, (8000,), []),
    ],
)
def test_pod_endpoints(pod: dict[str, Any], ports: tuple[int, ...], expected: list[str]) -> None:
    assert [f"{e.name}:{e.port}" for e in pod_endpoints(pod_info(pod), ports)] == expected


def test_endpoint_copies_identity_and_labels() -> None:
    pod = make_pod("p", "fd00::1", namespace="ns", labels={"app": "x", "llm-d.ai/role": "decode"})
    (endpoint,) = pod_endpoints(pod_info(pod), (8000,))
    assert endpoint.namespace == "ns" and endpoint.role == "decode" and endpoint.hostport == "[fd00::1]:8000"


def test_pool_spec_both_versions() -> None:
    v1 = pool_spec_from_object(make_pool("p", {"b": "2", "a": "1"}, [8000, 8001]))
    assert v1.label_selector == "a=1,b=2" and v1.target_ports == (8000, 8001)
    old = pool_spec_from_object(make_pool("p", {"app": "x"}, [9000], version="v1alpha2"))
    assert old.label_selector == "app=x" and old.target_ports == (9000,)


@pytest.mark.parametrize(
    "spec",
    [
        {},
        {"spec": {"selector": {"matchLabels": {}}, "targetPorts": [{"number": 1}]}},
        {"spec": {"selector": {"matchLabels": {"a": "b"}}}},
        {"spec": {"selector": {"matchLabels": {"a": "b"}}, "targetPorts": [{"number": 0}]}},
        {"spec": {"selector": {"matchLabels": {"a": "b"}}, "targetPorts": [{"number": 80}, {"number": 80}]}},
        {"spec": {"selector": {"matchLabels": {"a": "b"}}, "targetPorts": [{"number": p} for p in range(1, 10)]}},
        {"spec": {"selector": {"matchLabels": {"a": "b"}}, "targetPorts": [{"nope": 1}]}},
    ],
)
def test_invalid_pool_specs(spec: dict[str, Any]) -> None:
    with pytest.raises(PoolSpecError):
        pool_spec_from_object(spec)


def test_selector_and_ports_flags() -> None:
    assert parse_selector("app=vllm, tier==gold") == {"app": "vllm", "tier": "gold"}
    for bad in ("", "app", "app!=x", ","):
        with pytest.raises(PoolSpecError):
            parse_selector(bad)
    assert validate_ports(["8000", 8001]) == (8000, 8001)
    with pytest.raises(PoolSpecError):
        validate_ports(["80a"])
