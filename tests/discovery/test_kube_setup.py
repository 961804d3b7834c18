"""Flags → runtime: exclusivity, defaults, validation errors ``epp serve`` reports before it starts."""

from __future__ import annotations
from epp.cli import build_parser


import pytest

from epp.datastore import Datastore
from epp.discovery.kube_setup import DiscoveryConfigError, KubernetesFlags, build_runtime
from epp.serve_config import ServeConfig


def parse(*argv: str) -> KubernetesFlags:
    """The Kubernetes section of ``epp serve``'s configuration for these flags."""
    return ServeConfig.from_args(build_parser().parse_args(["serve", *argv])).discovery.kubernetes


def test_no_kubernetes_source_means_none() -> None:
    assert build_runtime(parse(), Datastore()) is None


def test_pool_namespace_falls_back_to_env_then_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NAMESPACE", raising=False)
    rt = build_runtime(parse("--pool-name", "p"), Datastore())
    assert rt is not None and rt.namespace == "default" and rt.lease_timing is None and rt.is_leader
    monkeypatch.setenv("NAMESPACE", "llm")
    rt = build_runtime(parse("--pool-name", "p"), Datastore())
    assert rt is not None and rt.namespace == "llm"
    rt = build_runtime(parse("--pool-name", "p", "--pool-namespace", "x"), Datastore())
    assert rt is not None and rt.namespace == "x"


def test_selector_mode() -> None:
    rt = build_runtime(parse("--endpoint-selector", "app=vllm", "--endpoint-target-ports", "8000,8001"),
                       Datastore())
    assert rt is not None and rt.static_spec is not None
    assert rt.static_spec.target_ports == (8000, 8001) and rt.objectives is None


@pytest.mark.parametrize(
    "argv",
    [
        ("--pool-name", "p", "--endpoint-selector", "a=b", "--endpoint-target-ports", "1"),
        ("--endpoint-target-ports", "8000"),
        ("--endpoint-selector", "a=b"),
        ("--endpoint-selector", "a=b", "--endpoint-target-ports", "8000,8000"),
        ("--endpoint-selector", "a", "--endpoint-target-ports", "8000"),
        ("--pool-name", "p", "--ha-enable-leader-election", "--ha-renew-deadline", "20"),
    ],
)
def test_bad_flag_combinations(argv: tuple[str, ...]) -> None:
    with pytest.raises(DiscoveryConfigError):
        build_runtime(parse(*argv), Datastore())


def test_unknown_pool_group_is_rejected_by_the_parser() -> None:
    with pytest.raises(SystemExit):
        parse("--pool-name", "p", "--pool-group", "example.com")


@pytest.mark.parametrize(("flag", "want"), [(("--ha-enable-leader-election",), True),
                                            (("--ha-enable-leader-election=true",), True),
                                            (("--ha-enable-leader-election=false",), False)])
def test_leader_election_flag_takes_go_booleans(flag: tuple[str, ...], want: bool) -> None:
    assert parse("--pool-name", "p", *flag).leader_election is want


async def test_a_start_failing_partway_closes_the_client(kubeconfig: str, monkeypatch: pytest.MonkeyPatch) -> None:
    import epp.discovery.kube_setup as kube_setup

    closed: list[bool] = []
    real_close = kube_setup.KubeApi.close

    async def close(self: kube_setup.KubeApi) -> None:
        closed.append(True)
        await real_close(self)

    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("discovery could not be built")

    monkeypatch.setattr(kube_setup.KubeApi, "close", close)
    monkeypatch.setattr(kube_setup, "PoolDiscovery", broken)
    rt = build_runtime(parse("--pool-name", "p", "--kubeconfig", kubeconfig), Datastore())
    assert rt is not None
    with pytest.raises(RuntimeError, match="could not be built"):
        async with rt:
            pass
    assert closed == [True]
