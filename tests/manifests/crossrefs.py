"""Cross-object checks: every reference in a rendered overlay must land on something real.

Schemas only see one object at a time; a route to a pool that does not exist, a pool whose
picker Service lacks the port, or a policy aimed at a misspelt route all validate fine and
then fail silently in the cluster (status conditions nobody reads). Each check here follows
one kind of reference the way the controller that consumes it would.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

from tests.manifests.schemas import Problem, object_id

GATEWAY_GROUP = "gateway.networking.k8s.io"
POOL_GROUP = "inference.networking.k8s.io"
WORKLOAD_KINDS = ("Deployment", "StatefulSet", "DaemonSet")


def selector_matches(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    """Kubernetes LabelSelector semantics (matchLabels and matchExpressions)."""
    for key, value in (selector.get("matchLabels") or {}).items():
        if labels.get(key) != value:
            return False
    for expr in selector.get("matchExpressions") or []:
        key, op, values = expr["key"], expr["operator"], expr.get("values") or []
        if (op == "In" and labels.get(key) not in values) or (op == "NotIn" and labels.get(key) in values):
            return False
        if (op == "Exists" and key not in labels) or (op == "DoesNotExist" and key in labels):
            return False
    return True


class Index:
    """The rendered objects, looked up the way references address them."""

    def __init__(self, objects: Iterable[dict[str, Any]]) -> None:
        self.objects = list(objects)
        self._by_key = {(o["kind"], namespace_of(o), o["metadata"]["name"]): o for o in self.objects}

    def get(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        return self._by_key.get((kind, namespace, name))

    def of_kind(self, *kinds: str) -> list[dict[str, Any]]:
        return [o for o in self.objects if o["kind"] in kinds]

    def pods_selected(self, namespace: str, selector: dict[str, Any]) -> list[dict[str, Any]]:
        """Pod templates (with their workload) in ``namespace`` that ``selector`` matches."""
        return [
            w
            for w in self.of_kind(*WORKLOAD_KINDS)
            if namespace_of(w) == namespace and selector_matches(selector, pod_labels(w))
        ]


def namespace_of(obj: dict[str, Any]) -> str:
    return (obj.get("metadata") or {}).get("namespace", "")


def pod_labels(workload: dict[str, Any]) -> dict[str, str]:
    return ((workload["spec"].get("template") or {}).get("metadata") or {}).get("labels") or {}


def containers(workload: dict[str, Any]) -> list[dict[str, Any]]:
    return workload["spec"]["template"]["spec"].get("containers") or []


def container_ports(workloads: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [p for w in workloads for c in containers(w) for p in c.get("ports") or []]


def service_port(service: dict[str, Any], number: int) -> dict[str, Any] | None:
    return next((p for p in service["spec"].get("ports") or [] if p["port"] == number), None)


def flag_value(args: list[str], name: str) -> str | None:
    for i, arg in enumerate(args):
        if arg.startswith(f"{name}="):
            return arg.split("=", 1)[1]
        if arg == name and i + 1 < len(args):
            return args[i + 1]
    return None


def check_service(index: Index, svc: dict[str, Any]) -> Iterator[Problem]:
    """A Service must select pods and each targetPort must exist on them."""
    selector = svc["spec"].get("selector")
    if not selector:
        return
    pods = index.pods_selected(namespace_of(svc), {"matchLabels": selector})
    if not pods:
        yield Problem(object_id(svc), f"selector {selector} matches no workload")
        return
    ports = container_ports(pods)
    for port in svc["spec"].get("ports") or []:
        target = port.get("targetPort", port["port"])
        if not any(p.get("name") == target or p["containerPort"] == target for p in ports):
            yield Problem(object_id(svc), f"port {port['port']} targets {target!r}, which no selected container exposes")


def check_pool(index: Index, pool: dict[str, Any]) -> Iterator[Problem]:
    """Pool -> picker Service and port -> picker Deployment serving this pool on that port."""
    where, ns, spec = object_id(pool), namespace_of(pool), pool["spec"]
    pods = index.pods_selected(ns, {"matchLabels": spec["selector"]["matchLabels"]})
    declared = {p["containerPort"] for p in container_ports(pods)}
    for target in spec["targetPorts"]:
        if pods and target["number"] not in declared:
            yield Problem(where, f"targetPort {target['number']} is not a containerPort of the selected model servers")
    ref = spec.get("endpointPickerRef")
    if not ref:
        yield Problem(where, "no endpointPickerRef (Istio and Envoy AI Gateway require one)")
        return
    if ref.get("kind", "Service") != "Service" or ref.get("group", "") != "":
        return
    svc = index.get("Service", ns, ref["name"])
    if svc is None:
        yield Problem(where, f"endpointPickerRef Service {ref['name']!r} does not exist")
        return
    if svc["spec"].get("type") == "ExternalName":
        yield Problem(where, "endpointPickerRef must not be an ExternalName Service")
    number = (ref.get("port") or {}).get("number")
    if number is None:  # the CRD's own CEL rule reports a Service ref without a port
        return
    svc_port = service_port(svc, number)
    if svc_port is None:
        yield Problem(where, f"endpointPickerRef port {number} is not a port of Service {ref['name']!r}")
        return
    yield from _check_picker_workload(index, where, pool, svc, svc_port)


def _check_picker_workload(
    index: Index, where: str, pool: dict[str, Any], svc: dict[str, Any], svc_port: dict[str, Any]
) -> Iterator[Problem]:
    target = svc_port.get("targetPort", svc_port["port"])
    for workload in index.pods_selected(namespace_of(svc), {"matchLabels": svc["spec"].get("selector") or {}}):
        for container in containers(workload):
            port = next((p for p in container.get("ports") or [] if target in (p.get("name"), p["containerPort"])), None)
            if port is None:
                continue
            args = container.get("args") or []
            pool_name = flag_value(args, "--pool-name")
            if pool_name != pool["metadata"]["name"]:
                yield Problem(where, f"picker {object_id(workload)} serves --pool-name={pool_name}, not this pool")
            grpc_port = flag_value(args, "--grpc-port")
            if grpc_port is not None and int(grpc_port) != port["containerPort"]:
                yield Problem(where, f"picker listens on --grpc-port={grpc_port} but the Service targets {port['containerPort']}")


def check_route(index: Index, route: dict[str, Any]) -> Iterator[Problem]:
    where, ns = object_id(route), namespace_of(route)
    for parent in route["spec"].get("parentRefs") or []:
        if parent.get("kind", "Gateway") != "Gateway":
            continue
        gateway = index.get("Gateway", parent.get("namespace", ns), parent["name"])
        if gateway is None:
            yield Problem(where, f"parent Gateway {parent['name']!r} does not exist")
            continue
        listeners = gateway["spec"]["listeners"]
        if "sectionName" in parent and parent["sectionName"] not in {listener["name"] for listener in listeners}:
            yield Problem(where, f"Gateway {parent['name']!r} has no listener {parent['sectionName']!r}")
        if namespace_of(gateway) != ns and all(
            ((listener.get("allowedRoutes") or {}).get("namespaces") or {}).get("from", "Same") == "Same"
            for listener in listeners
        ):
            yield Problem(where, f"Gateway {parent['name']!r} only accepts routes from its own namespace")
    for rule in route["spec"].get("rules") or []:
        for ref in rule.get("backendRefs") or []:
            yield from _check_backend_ref(index, where, ns, ref)


def _check_backend_ref(index: Index, where: str, ns: str, ref: dict[str, Any]) -> Iterator[Problem]:
    group, kind, ref_ns = ref.get("group", ""), ref.get("kind", "Service"), ref.get("namespace", ns)
    if ref_ns != ns and not any(namespace_of(g) == ref_ns for g in index.of_kind("ReferenceGrant")):
        yield Problem(where, f"backendRef to namespace {ref_ns!r} needs a ReferenceGrant there")
    if (group, kind) == (POOL_GROUP, "InferencePool"):
        if index.get("InferencePool", ref_ns, ref["name"]) is None:
            yield Problem(where, f"backendRef InferencePool {ref['name']!r} does not exist")
    elif (group, kind) == ("", "Service"):
        svc = index.get("Service", ref_ns, ref["name"])
        if svc is None:
            yield Problem(where, f"backendRef Service {ref['name']!r} does not exist")
        elif service_port(svc, ref.get("port", -1)) is None:
            yield Problem(where, f"backendRef Service {ref['name']!r} has no port {ref.get('port')}")
    else:
        yield Problem(where, f"backendRef kind {group}/{kind} is not something this deployment provides")


def check_policy_targets(index: Index, policy: dict[str, Any]) -> Iterator[Problem]:
    """Gateway-API policy attachment: targets live in the policy's namespace."""
    spec = policy["spec"]
    refs = ([spec["targetRef"]] if "targetRef" in spec else []) + list(spec.get("targetRefs") or [])
    for ref in refs:
        target = index.get(ref["kind"], namespace_of(policy), ref["name"])
        if ref.get("group", GATEWAY_GROUP) != GATEWAY_GROUP or target is None:
            yield Problem(object_id(policy), f"target {ref['kind']} {ref['name']!r} does not exist in the policy's namespace")
            continue
        section = ref.get("sectionName")
        if section:
            names = {listener["name"] for listener in target["spec"].get("listeners") or []} | {
                r.get("name") for r in target["spec"].get("rules") or []
            }
            if section not in names:
                yield Problem(object_id(policy), f"{ref['kind']} {ref['name']!r} has no section {section!r}")


def check_service_ref(index: Index, where: str, namespace: str, name: str, port: int | None) -> Iterator[Problem]:
    svc = index.get("Service", namespace, name)
    if svc is None:
        yield Problem(where, f"Service {namespace}/{name} does not exist")
    elif port is not None and service_port(svc, port) is None:
        yield Problem(where, f"Service {namespace}/{name} has no port {port}")
