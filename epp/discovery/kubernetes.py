"""Follow an InferencePool's pods (or a pool-less label selector) into the datastore.

Two reflectors (see ``reflector.py``): one on the pool object itself (a field selector on its name),
one on the pods its selector matches. Each pod event touches only that pod's endpoints
(``datastore.upsert``/``remove``), so a change reaches the scheduler as soon as the watch delivers it;
each list (first sync, 410 relist, resync, new selector) goes through ``datastore.replace_all``, which
touches only what differs. Removed endpoints leave the prefix index and the metrics poller through
the datastore's listeners.

Rules, as in the reference picker (gie-facts B1):

* pods are ignored until the pool has been read; the datastore is marked synced after the pool *and*
  a first full pod list (``datastore.mark_synced``), so readiness never reports a half-known pool;
* a pool selector change restarts the pod watch with the new selector and the endpoints are kept until
  the new list replaces them; a ``targetPorts`` change recomputes endpoints from the pods in hand;
* an invalid pool spec is logged and the last good one is kept;
* a deleted pool empties the datastore (the pool's owner removed it on purpose), whereas an
  unreachable API server keeps the last known endpoints — never an empty pool because of an outage.

epp does not write InferencePool status: the gateway controller owns ``status.parents`` conditions.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any

from epp.datastore import Datastore, Endpoint
from epp.discovery.kube_api import JSON, KubeApi, Resource
from epp.discovery.pods import PodInfo, PoolSpec, PoolSpecError, pod_endpoints, pod_info, pool_spec_from_object
from epp.discovery.reflector import Reflector, ReflectorHandler, ReflectorTiming
from epp.discovery.telemetry import DiscoveryMetrics

log = logging.getLogger(__name__)

POOL_VERSIONS: Mapping[str, str] = MappingProxyType(
    {"inference.networking.k8s.io": "v1", "inference.networking.x-k8s.io": "v1alpha2"}
)


class _PodTracker:
    """Pods seen by the current pod watch and the endpoint names each contributes."""

    def __init__(self, datastore: Datastore, spec: PoolSpec, on_first_list: Callable[[], None]) -> None:
        self.datastore = datastore
        self.spec = spec
        self.pods: dict[str, PodInfo] = {}
        self._names: dict[str, tuple[str, ...]] = {}
        self._on_first_list = on_first_list

    def replace(self, objects: list[JSON]) -> None:
        infos = (pod_info(obj) for obj in objects)
        self.pods = {info.name: info for info in infos if info.name}
        self.recompute()
        self._on_first_list()

    def recompute(self) -> None:
        endpoints: list[Endpoint] = []
        self._names = {}
        for info in self.pods.values():
            mine = pod_endpoints(info, self.spec.target_ports)
            self._names[info.name] = tuple(e.name for e in mine)
            endpoints.extend(mine)
        self.datastore.replace_all(endpoints)

    def apply(self, event_type: str, obj: JSON) -> None:
        info = pod_info(obj)
        if not info.name:
            return
        if event_type == "DELETED":
            self.pods.pop(info.name, None)
            wanted: list[Endpoint] = []
        else:
            self.pods[info.name] = info
            wanted = pod_endpoints(info, self.spec.target_ports)
        keep = {e.name for e in wanted}
        for name in self._names.get(info.name, ()):
            if name not in keep:
                self.datastore.remove(name)
        for endpoint in wanted:
            self.datastore.upsert(endpoint)
        self._names[info.name] = tuple(keep)


class PoolDiscovery:
    """Keeps ``datastore`` membership equal to the live endpoints of one pool.

    Either ``pool_name`` (watch that InferencePool in ``pool_group``) or ``static_spec`` (pool-less:
    ``--endpoint-selector`` + ``--endpoint-target-ports``) must be given. :meth:`run` runs until
    cancelled; it never raises for API trouble.
    """

    def __init__(
        self,
        api: KubeApi,
        datastore: Datastore,
        namespace: str,
        *,
        pool_name: str = "",
        pool_group: str = "inference.networking.k8s.io",
        static_spec: PoolSpec | None = None,
        timing: ReflectorTiming | None = None,
        metrics: DiscoveryMetrics | None = None,
        reflector_options: Mapping[str, Any] | None = None,
    ) -> None:
        if bool(pool_name) == (static_spec is not None):
            raise ValueError("give exactly one of pool_name and static_spec")
        if pool_name and pool_group not in POOL_VERSIONS:
            raise ValueError(f"unknown pool group {pool_group!r}; expected one of {sorted(POOL_VERSIONS)}")
        self.api = api
        self.datastore = datastore
        self.namespace = namespace
        self.pool_name = pool_name
        self.pool_group = pool_group
        self.timing = timing or ReflectorTiming()
        self.metrics = metrics or DiscoveryMetrics()
        self._options = dict(reflector_options or {})
        self.spec: PoolSpec | None = static_spec
        self.pool_labels: Mapping[str, str] = {}
        self._pods: _PodTracker | None = None
        self._pod_task: asyncio.Task[None] | None = None
        self._retired: set[asyncio.Task[None]] = set()
        self.synced = asyncio.Event()

    # -- lifecycle -----------------------------------------------------------------------------
    async def run(self) -> None:
        try:
            if self.pool_name:
                await self._reflector(
                    Resource(self.pool_group, POOL_VERSIONS[self.pool_group], "inferencepools", self.namespace),
                    _PoolHandler(self), field_selector=f"metadata.name={self.pool_name}",
                ).run()
            else:
                assert self.spec is not None
                self._start_pods(self.spec, "initial")
                assert self._pod_task is not None
                await self._pod_task
        finally:
            await self._stop_pods()

    def _reflector(self, resource: Resource, handler: ReflectorHandler, *,
                   label_selector: str = "", field_selector: str = "") -> Reflector:
        name = resource.plural
        return Reflector(
            self.api, resource, handler, timing=self.timing,
            on_reachable=lambda up: self.metrics.reachable(name, up),
            on_relist=lambda reason: self.metrics.relisted(name, reason),
            label_selector=label_selector, field_selector=field_selector, **self._options,
        )

    def _start_pods(self, spec: PoolSpec, reason: str) -> None:
        self._pods = _PodTracker(self.datastore, spec, self._pods_listed)
        reflector = self._reflector(Resource("", "v1", "pods", self.namespace), self._pods,
                                    label_selector=spec.label_selector)
        self._pod_task = asyncio.create_task(reflector.run(), name=f"epp-pods-{self.namespace}")
        log.info("watching pods in %s with selector %s (%s), target ports %s", self.namespace,
                 spec.label_selector, reason, list(spec.target_ports))

    async def _stop_pods(self) -> None:
        self._retire_pod_watch()
        tasks, self._retired = self._retired, set()
        await asyncio.gather(*tasks, return_exceptions=True)

    def _retire_pod_watch(self) -> None:
        """Cancel the current pod watch; its task is awaited at shutdown."""
        task, self._pod_task, self._pods = self._pod_task, None, None
        if task is not None:
            task.cancel()
            self._retired.add(task)
            task.add_done_callback(self._retired.discard)

    def _pods_listed(self) -> None:
        if not self.synced.is_set():
            self.synced.set()
            self.datastore.mark_synced()
            log.info("discovery synced: %d endpoints", len(self.datastore))

    # -- pool changes --------------------------------------------------------------------------
    def pool_changed(self, pool: JSON | None) -> None:
        """Apply the pool's current state (``None`` = deleted or absent)."""
        if pool is None:
            if self.spec is not None:
                log.warning("InferencePool %s/%s is gone; dropping its endpoints", self.namespace, self.pool_name)
                self.spec = None
                self._replace_pod_watch(None)
                self.datastore.replace_all([])
            return
        try:
            spec = pool_spec_from_object(pool)
        except PoolSpecError as err:
            log.error("InferencePool %s/%s is invalid (%s); keeping the last good spec", self.namespace,
                      self.pool_name, err)
            return
        self.pool_labels = dict((pool.get("metadata") or {}).get("labels") or {})
        previous, self.spec = self.spec, spec
        if previous is None or previous.selector != spec.selector:
            self._replace_pod_watch(spec)
        elif previous.target_ports != spec.target_ports and self._pods is not None:
            log.info("pool target ports changed to %s", list(spec.target_ports))
            self._pods.spec = spec
            self._pods.recompute()

    def _replace_pod_watch(self, spec: PoolSpec | None) -> None:
        self._retire_pod_watch()
        if spec is not None:
            self._start_pods(spec, "selector")


class _PoolHandler:
    """Reflector handler for the single pool object (the field selector leaves at most one)."""

    def __init__(self, discovery: PoolDiscovery) -> None:
        self.discovery = discovery

    def replace(self, objects: list[JSON]) -> None:
        self.discovery.pool_changed(objects[0] if objects else None)

    def apply(self, event_type: str, obj: JSON) -> None:
        self.discovery.pool_changed(None if event_type == "DELETED" else obj)
