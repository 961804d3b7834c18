"""Wiring for Kubernetes discovery, objectives and leader election (for ``epp serve``).

How the composition root wires it (``epp.discovery.sources``, from ``epp.serve_config``)::

    runtime = build_runtime(config.discovery.kubernetes, datastore, registry=prometheus_registry)
    if runtime is None:                                 # neither --pool-name nor --endpoint-selector
        ...                                             # use static/file discovery instead
    async with runtime:                                 # loads kubeconfig, starts watches (+ election)
        health.ready = lambda: runtime.ready            # synced (and leader, with HA)
        director.objective_priority = runtime.objective_priority
        director.model_rewriter = runtime.model_rewrite
        ...serve...
    # leaving the block releases the Lease first, then stops the watches

``runtime.ready`` is ``datastore.synced`` and, with ``--ha-enable-leader-election``, ``is_leader``;
liveness should stay SERVING regardless (gie-facts A10). :func:`build_runtime` raises
:class:`DiscoveryConfigError` (a ``ValueError``) for contradictory or malformed flags.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry

from epp._util.lifecycle import AsyncService
from epp.datastore import Datastore
from epp.discovery.kube_api import KubeApi, Resource, load_api_client
from epp.discovery.kubernetes import PoolDiscovery
from epp.discovery.leader import LeaderElector, LeaseTiming, default_identity, lease_name
from epp.discovery.objectives import ObjectiveIndex, objective_resources
from epp.discovery.pods import PoolSpec, PoolSpecError, parse_selector, validate_ports
from epp.discovery.reflector import Reflector, ReflectorHandler, ReflectorTiming
from epp.discovery.rewrites import ModelRewrites, RewriteWatch, rewrite_resources
from epp.discovery.telemetry import DiscoveryMetrics

log = logging.getLogger(__name__)


class DiscoveryConfigError(ValueError):
    """The discovery flags contradict each other or do not parse."""


@dataclass(frozen=True, slots=True)
class KubernetesFlags:
    """The reference picker's discovery and HA flags (gie-facts D2; defined in ``epp.serve_flags``), as given:
    ``build_runtime`` checks them. ``pool_namespace`` is resolved (``--pool-namespace``, else ``$NAMESPACE``,
    else ``default``); ``lease`` applies only with ``leader_election``."""

    pool_name: str = ""
    pool_namespace: str = "default"
    pool_group: str = "inference.networking.k8s.io"
    endpoint_selector: str = ""
    endpoint_target_ports: str = ""
    kubeconfig: str = ""
    leader_election: bool = False
    lease: LeaseTiming = field(default_factory=LeaseTiming)

    @property
    def enabled(self) -> bool:
        """Whether these flags name a Kubernetes source (a pool, or pods by selector)."""
        return bool(self.pool_name or self.endpoint_selector)


def build_runtime(
    flags: KubernetesFlags,
    datastore: Datastore,
    *,
    registry: CollectorRegistry | None = None,
    timing: ReflectorTiming | None = None,
    identity: str | None = None,
) -> KubernetesRuntime | None:
    """A :class:`KubernetesRuntime` for the flags, or ``None`` when they set no Kubernetes source."""
    if flags.pool_name and flags.endpoint_selector:
        raise DiscoveryConfigError("--pool-name and --endpoint-selector are mutually exclusive")
    if not flags.enabled:
        if flags.endpoint_target_ports:
            raise DiscoveryConfigError("--endpoint-target-ports needs --endpoint-selector")
        return None
    static_spec = None
    if flags.endpoint_selector:
        try:
            ports = validate_ports(p for p in flags.endpoint_target_ports.split(",") if p.strip())
            static_spec = PoolSpec(selector=parse_selector(flags.endpoint_selector), target_ports=ports)
        except PoolSpecError as err:
            raise DiscoveryConfigError(str(err)) from None
    lease = None
    if flags.leader_election:
        lease = flags.lease
        if not lease.retry_period < lease.renew_deadline < lease.lease_duration:
            raise DiscoveryConfigError("need --ha-retry-period < --ha-renew-deadline < --ha-lease-duration")
    return KubernetesRuntime(
        datastore, flags.pool_namespace, pool_name=flags.pool_name, pool_group=flags.pool_group,
        static_spec=static_spec, kubeconfig=flags.kubeconfig, lease_timing=lease,
        registry=registry, timing=timing, identity=identity,
    )


class KubernetesRuntime(AsyncService):
    """Owns the API client and the discovery, objective and election tasks of one ``epp`` process.

    Use as ``async with``: entering loads the kubeconfig and starts the tasks; leaving releases the
    Lease, cancels the tasks and closes the client, in that order.
    """

    def __init__(
        self,
        datastore: Datastore,
        namespace: str,
        *,
        pool_name: str = "",
        pool_group: str = "inference.networking.k8s.io",
        static_spec: PoolSpec | None = None,
        kubeconfig: str = "",
        lease_timing: LeaseTiming | None = None,
        registry: CollectorRegistry | None = None,
        timing: ReflectorTiming | None = None,
        identity: str | None = None,
        objective_timing: ReflectorTiming | None = None,
    ) -> None:
        self.datastore = datastore
        self.namespace = namespace
        self.pool_name = pool_name
        self.pool_group = pool_group
        self.static_spec = static_spec
        self.kubeconfig = kubeconfig
        self.lease_timing = lease_timing
        self.metrics = DiscoveryMetrics(registry)
        self.timing = timing or ReflectorTiming()
        self.objective_timing = objective_timing or self.timing
        self.identity = identity or default_identity()
        self.objectives = ObjectiveIndex(pool_name, pool_group) if pool_name else None
        self.rewrites = ModelRewrites()
        self.rewrite_watch = RewriteWatch(pool_name, pool_group, self.rewrites) if pool_name else None
        self.discovery: PoolDiscovery | None = None
        self.elector: LeaderElector | None = None
        self._api: KubeApi | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._election: asyncio.Task[None] | None = None

    @property
    def is_leader(self) -> bool:
        """Always true without leader election (every replica serves)."""
        return self.elector is None or self.elector.is_leader

    @property
    def ready(self) -> bool:
        return self.datastore.synced and self.is_leader

    def objective_priority(self, name: str) -> int:
        """Priority of InferenceObjective ``name`` for this pool; unknown or pool-less → 0."""
        return self.objectives.priority(name) if self.objectives is not None else 0

    def model_rewrite(self, model: str) -> tuple[str, str] | None:
        """(InferenceModelRewrite name, target model) for an incoming model name; no rule or pool-less → None."""
        return self.rewrites.resolve(model)

    async def start(self) -> None:
        """Load the kubeconfig and start the tasks; on any failure, undo what was started and re-raise."""
        try:
            await self._start()
        except BaseException:
            await self.stop()
            raise

    async def _start(self) -> None:
        self._api = KubeApi(await load_api_client(self.kubeconfig))
        self.discovery = PoolDiscovery(
            self._api, self.datastore, self.namespace, pool_name=self.pool_name, pool_group=self.pool_group,
            static_spec=self.static_spec, timing=self.timing, metrics=self.metrics,
        )
        self._spawn(self.discovery.run(), "discovery")
        if self.objectives is not None:
            self._watch(objective_resources(self.pool_group, self.namespace), self.objectives.sets)
        if self.rewrite_watch is not None:
            self._watch(rewrite_resources(self.pool_group, self.namespace), self.rewrite_watch.sets)
        if self.lease_timing is not None:
            name = lease_name(self.namespace, self.pool_name or "endpoints")
            self.elector = LeaderElector(self._api, self.namespace, name, self.identity, timing=self.lease_timing,
                                         on_change=self.metrics.leader)
            self.metrics.leader(False)
            self._election = self._spawn(self.elector.run(), "leader-election")

    def _watch(self, resources: list[Resource], handlers: Sequence[ReflectorHandler]) -> None:
        """One reflector per API group of a pool-scoped collection (objectives, rewrites)."""
        assert self._api is not None
        for resource, handler in zip(resources, handlers, strict=True):
            what = f"{resource.plural}.{resource.group}"
            reflector = Reflector(
                self._api, resource, handler, timing=self.objective_timing,
                on_relist=functools.partial(self.metrics.relisted, what),
            )
            self._spawn(reflector.run(), what)

    def _spawn(self, coro: Any, name: str) -> asyncio.Task[None]:
        task = asyncio.create_task(coro, name=f"epp-{name}")
        self._tasks.append(task)
        return task

    async def stop(self) -> None:
        """Release the Lease (hand-over), then stop watching and close the client."""
        election, self._election = self._election, None
        if election is not None and self.elector is not None:
            election.cancel()
            await asyncio.gather(election, return_exceptions=True)
            await self.elector.release()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        if self._api is not None:
            await self._api.close()
            self._api = None
