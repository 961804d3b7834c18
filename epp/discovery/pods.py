"""Pure mapping from Kubernetes objects to endpoints: pool specs, pod readiness, active ports.

No I/O here, so the rules the reference picker applies (gie-facts B1) are testable as a table:

* a pool yields a label selector (``matchLabels`` in v1; a plain map in x-k8s.io v1alpha2) and 1–8
  target ports (``targetPorts[].number`` in v1; ``targetPortNumber`` in v1alpha2);
* a pod is live when ``PodReady=True``, it has no ``deletionTimestamp`` and it has an IP;
* a live pod yields one endpoint per target port, ``<pod>-rank-<i>`` with ``i`` the port's index in
  ``targetPorts`` (stable when the annotation hides some ports), restricted to the ports listed in
  ``llm-d.ai/active-ports`` (legacy ``inference.networking.k8s.io/active-ports``) when present.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from epp.datastore import Endpoint

ACTIVE_PORTS_ANNOTATIONS = ("llm-d.ai/active-ports", "inference.networking.k8s.io/active-ports")
MAX_TARGET_PORTS = 8


class PoolSpecError(ValueError):
    """The pool (or the pool-less flags) cannot be turned into a selector and ports."""


@dataclass(frozen=True, slots=True)
class PoolSpec:
    """What discovery needs from an InferencePool: which pods, which ports."""

    selector: Mapping[str, str]
    target_ports: tuple[int, ...]

    @property
    def label_selector(self) -> str:
        """The selector as the API's ``labelSelector`` query string (``k=v,k2=v2``, sorted)."""
        return ",".join(f"{k}={v}" for k, v in sorted(self.selector.items()))


def validate_ports(ports: Iterable[Any]) -> tuple[int, ...]:
    """1–8 unique integers in 1..65535, in order; anything else is a :class:`PoolSpecError`."""
    result: list[int] = []
    for raw in ports:
        try:
            port = int(raw)
        except (TypeError, ValueError):
            raise PoolSpecError(f"target port {raw!r} is not an integer") from None
        if not 1 <= port <= 65535:
            raise PoolSpecError(f"target port {port} is outside 1..65535")
        if port in result:
            raise PoolSpecError(f"target port {port} is listed twice")
        result.append(port)
    if not 1 <= len(result) <= MAX_TARGET_PORTS:
        raise PoolSpecError(f"need 1 to {MAX_TARGET_PORTS} target ports, got {len(result)}")
    return tuple(result)


def parse_selector(text: str) -> dict[str, str]:
    """``k=v,k2==v2`` → dict. Only equality terms: the pool selector is a plain ``matchLabels`` map."""
    selector: dict[str, str] = {}
    for term in (t.strip() for t in text.split(",")):
        if not term:
            continue
        key, sep, value = term.replace("==", "=").partition("=")
        if not sep or not key.strip() or "!" in key:
            raise PoolSpecError(f"endpoint selector term {term!r} is not key=value")
        selector[key.strip()] = value.strip()
    if not selector:
        raise PoolSpecError("endpoint selector is empty")
    return selector


def pool_spec_from_object(pool: Mapping[str, Any]) -> PoolSpec:
    """Read an InferencePool of either API version; malformed specs raise :class:`PoolSpecError`."""
    spec = pool.get("spec")
    if not isinstance(spec, Mapping):
        raise PoolSpecError("pool has no spec")
    raw_selector = spec.get("selector")
    if isinstance(raw_selector, Mapping) and isinstance(raw_selector.get("matchLabels"), Mapping):
        raw_selector = raw_selector["matchLabels"]
    if not isinstance(raw_selector, Mapping) or not raw_selector:
        raise PoolSpecError("pool selector is missing or empty")
    selector = {str(k): str(v) for k, v in raw_selector.items()}
    if isinstance(spec.get("targetPorts"), list):
        ports = [p.get("number") if isinstance(p, Mapping) else p for p in spec["targetPorts"]]
    elif spec.get("targetPortNumber") is not None:
        ports = [spec["targetPortNumber"]]
    else:
        raise PoolSpecError("pool has neither targetPorts nor targetPortNumber")
    return PoolSpec(selector=MappingProxyType(selector), target_ports=validate_ports(ports))


@dataclass(frozen=True, slots=True)
class PodInfo:
    """The few pod fields endpoints depend on; kept instead of the whole object to bound memory."""

    name: str
    namespace: str
    ip: str
    live: bool
    labels: Mapping[str, str] = field(default_factory=dict)
    active_ports: frozenset[int] | None = None


def pod_info(pod: Mapping[str, Any]) -> PodInfo:
    """Extract :class:`PodInfo`; tolerant of missing fields (a half-created pod is simply not live)."""
    meta = pod.get("metadata") or {}
    status = pod.get("status") or {}
    ready = any(
        c.get("type") == "Ready" and c.get("status") == "True"
        for c in status.get("conditions") or ()
        if isinstance(c, Mapping)
    )
    ip = str(status.get("podIP") or "")
    annotations = meta.get("annotations") or {}
    return PodInfo(
        name=str(meta.get("name", "")),
        namespace=str(meta.get("namespace", "")),
        ip=ip,
        live=ready and bool(ip) and not meta.get("deletionTimestamp"),
        labels=MappingProxyType({str(k): str(v) for k, v in (meta.get("labels") or {}).items()}),
        active_ports=_active_ports(annotations),
    )


def _active_ports(annotations: Mapping[str, Any]) -> frozenset[int] | None:
    for key in ACTIVE_PORTS_ANNOTATIONS:
        if key in annotations:
            ports = set()
            for item in str(annotations[key]).split(","):
                item = item.strip()
                if item.isdigit() and int(item) > 0:
                    ports.add(int(item))
            return frozenset(ports)
    return None


def pod_endpoints(pod: PodInfo, target_ports: tuple[int, ...]) -> list[Endpoint]:
    """The endpoints a pod contributes: none unless live; one per (active) target port."""
    if not pod.live:
        return []
    return [
        Endpoint(name=f"{pod.name}-rank-{i}", address=pod.ip, port=port, namespace=pod.namespace, labels=pod.labels)
        for i, port in enumerate(target_ports)
        if pod.active_ports is None or port in pod.active_ports
    ]
