"""Leader election on a Lease in the fake API server: hand-over, crash take-over, step-down, two processes."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from epp._util.proc import spawn
from epp.datastore import Datastore
from epp.discovery.kube_api import KubeApi, load_api_client
from epp.discovery.kube_setup import KubernetesRuntime
from epp.discovery.leader import LeaderElector, LeaseTiming, lease_name
from tests.conftest import wait_for
from tests.discovery.conftest import FAST
from tests.fakes.kube_apiserver import FakeKubeApiServer, make_pod, make_pool

# FAST_LEASE for what must happen quickly (expiry, step-down); STABLE_LEASE where a test asserts that
# leadership does *not* change: a loaded CI box may stall a renewal for a second, never for 20.
FAST_LEASE = LeaseTiming(lease_duration=1.0, renew_deadline=0.6, retry_period=0.1)
STABLE_LEASE = LeaseTiming(lease_duration=30.0, renew_deadline=20.0, retry_period=0.1)
LEASE = ("coordination.k8s.io", "v1", "leases", "default")
NAME = lease_name("default", "pool")
REPO = Path(__file__).resolve().parents[2]


class Replica:
    """One elector with its own API client (its own connections), as a separate pod would have."""

    def __init__(self, api: KubeApi, identity: str, timing: LeaseTiming) -> None:
        self.api = api
        self.elector = LeaderElector(api, "default", NAME, identity, timing=timing)
        self.task = asyncio.create_task(self.elector.run())

    async def stop(self, release: bool = True) -> None:
        self.task.cancel()
        await asyncio.gather(self.task, return_exceptions=True)
        if release:
            await self.elector.release()


@pytest.fixture
async def replicas(kubeconfig: str) -> AsyncIterator[Callable[[str], object]]:
    made: list[Replica] = []

    async def make(identity: str, timing: LeaseTiming = FAST_LEASE) -> Replica:
        replica = Replica(KubeApi(await load_api_client(kubeconfig)), identity, timing)
        made.append(replica)
        return replica

    yield make  # type: ignore[misc]
    for replica in made:
        await replica.stop(release=False)
        await replica.api.close()


def holder(server: FakeKubeApiServer) -> str:
    lease = server.objects.get(LEASE, {}).get(NAME)
    return str(lease["spec"].get("holderIdentity", "")) if lease else ""


async def renewals(server: FakeKubeApiServer, count: int) -> None:
    """Wait until the Lease's renewTime has moved ``count`` times: the holder keeps renewing."""
    seen: set[str] = set()

    def renewed() -> bool:
        lease = server.objects.get(LEASE, {}).get(NAME)
        if lease:
            seen.add(str(lease["spec"].get("renewTime")))
        return len(seen) > count

    await wait_for(renewed, what=f"{count} lease renewals")


async def test_release_hands_over_to_standby(apiserver: FakeKubeApiServer, replicas: Callable[..., object]) -> None:
    a = await replicas("a", STABLE_LEASE)  # type: ignore[misc]
    await wait_for(lambda: a.elector.is_leader)
    b = await replicas("b", STABLE_LEASE)  # type: ignore[misc]
    await renewals(apiserver, 3)  # b campaigns meanwhile, but the renewed lease is not free
    assert a.elector.is_leader and not b.elector.is_leader and holder(apiserver) == "a"
    await a.stop(release=True)
    assert not a.elector.is_leader
    await wait_for(lambda: b.elector.is_leader, what="standby to take over")
    assert holder(apiserver) == "b"
    assert apiserver.objects[LEASE][NAME]["spec"]["leaseTransitions"] == 1


async def test_crashed_leader_is_replaced_after_lease_expiry(
    apiserver: FakeKubeApiServer, replicas: Callable[..., object]
) -> None:
    a = await replicas("a")  # type: ignore[misc]
    b = await replicas("b")  # type: ignore[misc]
    await wait_for(lambda: a.elector.is_leader or b.elector.is_leader)
    assert a.elector.is_leader != b.elector.is_leader  # the 409 on racing writes leaves one winner
    leader, standby = (a, b) if a.elector.is_leader else (b, a)
    await leader.stop(release=False)  # killed: the lease still names it until it expires
    assert holder(apiserver) == leader.elector.identity
    await wait_for(lambda: standby.elector.is_leader, what="take-over after expiry")
    assert holder(apiserver) == standby.elector.identity


async def test_leader_steps_down_when_it_cannot_renew(
    apiserver: FakeKubeApiServer, replicas: Callable[..., object]
) -> None:
    a = await replicas("a")  # type: ignore[misc]
    await wait_for(lambda: a.elector.is_leader)
    await apiserver.stop()
    await wait_for(lambda: not a.elector.is_leader, what="step-down after the renew deadline")
    await apiserver.start()
    await wait_for(lambda: a.elector.is_leader, what="re-acquire its own lease")


async def test_two_processes_hand_over_on_sigterm(apiserver: FakeKubeApiServer, kubeconfig: str) -> None:
    apiserver.put(make_pool("pool", {"app": "vllm"}, [8000]))
    apiserver.put(make_pod("a", "10.0.0.1"))
    flags = ["--pool-name", "pool", "--kubeconfig", kubeconfig, "--ha-enable-leader-election",
             "--ha-lease-duration", "30", "--ha-renew-deadline", "20", "--ha-retry-period", "0.1"]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    child = spawn([sys.executable, "-m", "tests.discovery.elector_proc", *flags], cwd=REPO, env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    here = KubernetesRuntime(Datastore(), "default", pool_name="pool", kubeconfig=kubeconfig, timing=FAST,
                             lease_timing=STABLE_LEASE, identity="in-test")
    try:
        assert child.stdout is not None
        loop = asyncio.get_running_loop()
        line = ""
        while "leader=True" not in line:
            line = await asyncio.wait_for(loop.run_in_executor(None, child.stdout.readline), 15)
            assert line, "child exited before leading"
        assert "ready=True" in line
        await here.start()
        await wait_for(lambda: here.datastore.synced)
        await renewals(apiserver, 3)  # the child keeps its lease while this replica campaigns
        assert not here.is_leader and not here.ready  # synced standby: populated, but not ready
        assert len(here.datastore) == 1
        child.send_signal(signal.SIGTERM)
        await wait_for(lambda: here.is_leader and here.ready, what="hand-over from the other process")
        out = await asyncio.wait_for(loop.run_in_executor(None, child.stdout.read), 10)
        assert "released" in out
    finally:
        await here.stop()
        if child.poll() is None:
            child.kill()
        child.wait(timeout=10)
        if child.stdout is not None:
            child.stdout.close()
    assert holder(apiserver) == ""  # released again on our own shutdown
