"""Active-passive HA: leader election on a ``coordination.k8s.io/v1`` Lease, as client-go does it.

The Lease is named like the reference's: ``epp-<namespace>-<pool>.llm-d.ai``. Timing defaults are
controller-runtime's: lease 15 s, renew deadline 10 s, retry 2 s.

* A candidate reads the Lease every ``retry_period`` (× 1–2.2 jitter). It takes the Lease when it is
  missing, has no holder (released), or its record has not changed for ``lease_duration`` seconds of
  *local* time (clock skew between replicas does not matter). Writes carry the read resourceVersion,
  so two candidates racing get one success and one ``409 Conflict``.
* The leader renews every ``retry_period``; if no renewal succeeded for ``renew_deadline`` seconds it
  steps down (``is_leader`` false) and campaigns again. On shutdown :meth:`release` empties the holder
  so a standby takes over within one retry period instead of a full lease duration.

Only the leader reports ready (the gateway then sends traffic to it alone); every replica keeps its
datastore populated (the reference's ``haPopulateNonLeaderDatastore`` default), so a new leader serves
at once.

Active-active (several ready replicas, no election) also works: each replica discovers the pool and
scrapes metrics on its own, but prefix-cache affinity and in-flight counts are per replica, so
requests for one prefix spread over replicas and hit rates drop roughly by the replica count.
"""

from __future__ import annotations

import asyncio
import logging
import random
import socket
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from epp.discovery.kube_api import JSON, KubeApi, KubeApiError

log = logging.getLogger(__name__)


def lease_name(namespace: str, pool: str) -> str:
    return f"epp-{namespace}-{pool}.llm-d.ai"


def default_identity() -> str:
    """``<hostname>_<uuid>``: unique per process even when pods share a hostname."""
    return f"{socket.gethostname()}_{uuid.uuid4()}"


@dataclass(frozen=True, slots=True)
class LeaseTiming:
    lease_duration: float = 15.0
    renew_deadline: float = 10.0
    retry_period: float = 2.0


def _micro_time(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class LeaderElector:
    """Campaigns for and holds one Lease; ``is_leader`` is the readiness gate."""

    def __init__(
        self,
        api: KubeApi,
        namespace: str,
        name: str,
        identity: str,
        *,
        timing: LeaseTiming | None = None,
        on_change: Callable[[bool], None] | None = None,
        now: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
        sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
        rng: random.Random | None = None,
    ) -> None:
        self.api = api
        self.path = f"/apis/coordination.k8s.io/v1/namespaces/{namespace}/leases"
        self.namespace = namespace
        self.name = name
        self.identity = identity
        self.timing = timing or LeaseTiming()
        self._on_change = on_change or (lambda _leader: None)
        self._now = now
        self._wall = wall
        self._sleep = sleep
        self._rng = rng or random.Random()
        self._leader = False
        self._observed: tuple[str, str] | None = None
        self._observed_at = 0.0
        self._renewed_at = 0.0

    @property
    def is_leader(self) -> bool:
        return self._leader

    def _set_leader(self, leader: bool) -> None:
        if leader != self._leader:
            self._leader = leader
            log.info("leader election: %s %s lease %s/%s", self.identity,
                     "acquired" if leader else "lost", self.namespace, self.name)
            self._on_change(leader)

    async def run(self) -> None:
        """Campaign and renew until cancelled; call :meth:`release` afterwards to hand over."""
        while True:
            ok = await self._try_acquire_or_renew()
            now = self._now()
            if ok:
                self._renewed_at = now
                self._set_leader(True)
            elif self._leader and now - self._renewed_at > self.timing.renew_deadline:
                self._set_leader(False)
            delay = self.timing.retry_period
            if not self._leader:
                delay *= 1 + 1.2 * self._rng.random()
            await self._sleep(delay)

    async def release(self) -> None:
        """Give the Lease up (empty holder) if held, so a standby need not wait for it to expire."""
        if not self._leader:
            return
        self._set_leader(False)
        try:
            lease = await self.api.request("GET", f"{self.path}/{self.name}")
            spec = lease.get("spec") or {}
            if spec.get("holderIdentity") != self.identity:
                return
            now = _micro_time(self._wall())
            lease["spec"] = {**spec, "holderIdentity": "", "leaseDurationSeconds": 1, "renewTime": now,
                             "acquireTime": now}
            await self.api.request("PUT", f"{self.path}/{self.name}", body=lease, timeout=5.0)
        except Exception as err:  # noqa: BLE001 - best effort: the lease expires anyway
            log.warning("leader election: could not release lease %s: %s", self.name, err)

    async def _try_acquire_or_renew(self) -> bool:
        try:
            return await self._attempt()
        except KubeApiError as err:
            if err.status != 409:
                log.warning("leader election: lease %s: %s", self.name, err)
            return False
        except Exception as err:  # noqa: BLE001 - unreachable API: keep campaigning
            log.warning("leader election: lease %s: %s", self.name, err)
            return False

    async def _attempt(self) -> bool:
        now, wall = self._now(), _micro_time(self._wall())
        duration = max(1, round(self.timing.lease_duration))
        try:
            lease = await self.api.request("GET", f"{self.path}/{self.name}", timeout=self.timing.retry_period * 2)
        except KubeApiError as err:
            if err.status != 404:
                raise
            body: JSON = {
                "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                "metadata": {"name": self.name, "namespace": self.namespace},
                "spec": {"holderIdentity": self.identity, "leaseDurationSeconds": duration,
                         "acquireTime": wall, "renewTime": wall, "leaseTransitions": 0},
            }
            await self.api.request("POST", self.path, body=body, timeout=self.timing.retry_period * 2)
            return True
        spec = lease.get("spec") or {}
        holder = str(spec.get("holderIdentity") or "")
        record = (holder, str(spec.get("renewTime") or ""))
        if record != self._observed:
            self._observed, self._observed_at = record, now
        held_for = float(spec.get("leaseDurationSeconds") or duration)
        if holder and holder != self.identity and now < self._observed_at + held_for:
            return False
        mine = holder == self.identity
        transitions = int(spec.get("leaseTransitions") or 0)
        lease["spec"] = {
            **spec,
            "holderIdentity": self.identity,
            "leaseDurationSeconds": duration,
            "renewTime": wall,
            "acquireTime": spec.get("acquireTime") if mine else wall,
            "leaseTransitions": transitions if mine else transitions + 1,
        }
        updated = await self.api.request("PUT", f"{self.path}/{self.name}", body=lease,
                                         timeout=self.timing.retry_period * 2)
        new_spec = updated.get("spec") or {}
        self._observed, self._observed_at = (self.identity, str(new_spec.get("renewTime") or wall)), now
        return True
