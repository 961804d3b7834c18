"""Flags and wiring for Kubernetes discovery, objectives and leader election (for ``epp serve``).

How the composition root wires it (``epp/app.py``)::

    add_kubernetes_flags(parser)                       # in configure_parser
    ...
    runtime = build_from_args(args, datastore, registry=prometheus_registry)
    if runtime is None:                                 # neither --pool-name nor --endpoint-selector
        ...                                             # use static/file discovery instead
    async with runtime:                                 # loads kubeconfig, starts watches (+ election)
        health.ready = lambda: runtime.ready            # synced (and leader, with HA)
        director.objective_priority = runtime.objective_priority
        director.model_rewriter = runtime.model_rewrite
        ...serve...
    # leaving the block releases the Lease first, then stops the watches

``runtime.ready`` is ``datastore.synced`` and, with ``--ha-enable-leader-election``, ``is_leader``;
liveness should stay SERVING regardless (gie-facts A10). :func:`build_from_args` raises
:class:`DiscoveryConfigError` (a ``ValueError``) for contradictory or malformed flags; report it with
``parser.error``.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import logging
import os
from collections.abc import Sequence
from typing import Any

from prometheus_client import CollectorRegistry

from epp._util.cli import bool_flag, seconds
from epp._util.lifecycle import AsyncService
from epp.datastore import Datastore
from epp.discovery.kube_api import KubeApi, Resource, load_api_client
from epp.discovery.kubernetes import POOL_VERSIONS, PoolDiscovery
from epp.discovery.leader import LeaderElector, LeaseTiming, default_identity, lease_name
from epp.discovery.objectives import ObjectiveIndex, objective_resources
from epp.discovery.pods import PoolSpec, PoolSpecError, parse_selector, validate_ports
from epp.discovery.reflector import Reflector, ReflectorHandler, ReflectorTiming
from epp.discovery.rewrites import ModelRewrites, RewriteWatch, rewrite_resources
from epp.discovery.telemetry import DiscoveryMetrics

log = logging.getLogger(__name__)


class DiscoveryConfigError(ValueError):
    """The discovery flags contradict each other or do not parse."""


def add_kubernetes_flags(parser: argparse.ArgumentParser) -> None:
    """Add the reference picker's discovery and HA flags (gie-facts D2) to ``parser``."""
    group = parser.add_argument_group("Kubernetes discovery")
    group.add_argument("--pool-name", default="", help="InferencePool to serve (or use --endpoint-selector)")
    group.add_argument("--pool-namespace", default="", help="namespace of the pool; default $NAMESPACE, else default")
    group.add_argument("--pool-group", default="inference.networking.k8s.io", choices=sorted(POOL_VERSIONS),
                       help="API group of the InferencePool (v1, or the older x-k8s.io v1alpha2)")
    group.add_argument("--endpoint-selector", default="",
                       help="pool-less mode: label selector of model-server pods (k=v,k2=v2)")
    group.add_argument("--endpoint-target-ports", default="",
                       help="pool-less mode: comma list of 1-8 model-server ports")
    group.add_argument("--kubeconfig", default="",
                       help="kubeconfig file; default $KUBECONFIG, then in-cluster, then ~/.kube/config")
    bool_flag(group, "--ha-enable-leader-election", False, "active-passive HA: only the Lease holder reports ready")
    group.add_argument("--ha-lease-duration", type=seconds, default="15s", metavar="DURATION",
                       help="how long a Lease holds without renewal (Go duration, or bare seconds)")
    group.add_argument("--ha-renew-deadline", type=seconds, default="10s", metavar="DURATION",
                       help="how long the leader keeps retrying a renewal before giving up the lead")
    group.add_argument("--ha-retry-period", type=seconds, default="2s", metavar="DURATION",
                       help="wait between attempts to acquire or renew the Lease")


def _namespace(args: argparse.Namespace) -> str:
    return str(args.pool_namespace or os.environ.get("NAMESPACE") or "default")


def build_from_args(
    args: argparse.Namespace,
    datastore: Datastore,
    *,
    registry: CollectorRegistry | None = None,
    timing: ReflectorTiming | None = None,
    identity: str | None = None,
) -> KubernetesRuntime | None:
    """A :class:`KubernetesRuntime` for the parsed flags, or ``None`` when no Kubernetes source is set."""
    if args.pool_name and args.endpoint_selector:
        raise DiscoveryConfigError("--pool-name and --endpoint-selector are mutually exclusive")
    if not args.pool_name and not args.endpoint_selector:
        if args.endpoint_target_ports:
            raise DiscoveryConfigError("--endpoint-target-ports needs --endpoint-selector")
        return None
    static_spec = None
    if args.endpoint_selector:
        try:
            ports = validate_ports(p for p in args.endpoint_target_ports.split(",") if p.strip())
            static_spec = PoolSpec(selector=parse_selector(args.endpoint_selector), target_ports=ports)
        except PoolSpecError as err:
            raise DiscoveryConfigError(str(err)) from None
    lease = None
    if args.ha_enable_leader_election:
        lease = LeaseTiming(args.ha_lease_duration, args.ha_renew_deadline, args.ha_retry_period)
        if not lease.retry_period < lease.renew_deadline < lease.lease_duration:
            raise DiscoveryConfigError("need --ha-retry-period < --ha-renew-deadline < --ha-lease-duration")
    return KubernetesRuntime(
        datastore, _namespace(args), pool_name=args.pool_name, pool_group=args.pool_group,
        static_spec=static_spec, kubeconfig=args.kubeconfig, lease_timing=lease,
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
