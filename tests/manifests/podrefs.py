"""Checks of what pods depend on or are selected by: identities, RBAC, mounted config, probe
ports, NetworkPolicies, disruption budgets and scrape configs.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import PurePosixPath
from typing import Any

from epp.bbr.catalog import CatalogError, ModelCatalog
from epp.bbr.models_file import parse_models_yaml
from tests.manifests.crossrefs import Index, container_ports, containers, flag_value, namespace_of, selector_matches
from tests.manifests.epp_config import check_endpoint_picker_config
from tests.manifests.schemas import Problem, object_id


def check_workload(index: Index, workload: dict[str, Any]) -> Iterator[Problem]:
    where, ns = object_id(workload), namespace_of(workload)
    pod = workload["spec"]["template"]["spec"]
    account = pod.get("serviceAccountName")
    if account and account != "default" and index.get("ServiceAccount", ns, account) is None:
        yield Problem(where, f"ServiceAccount {account!r} does not exist")
    volumes = {v["name"]: v for v in pod.get("volumes") or []}
    for volume in volumes.values():
        cm = volume.get("configMap")
        if cm and not cm.get("optional") and index.get("ConfigMap", ns, cm["name"]) is None:
            yield Problem(where, f"volume {volume['name']!r}: ConfigMap {cm['name']!r} does not exist")
    for container in containers(workload):
        ports = container.get("ports") or []
        for probe_name in ("startupProbe", "livenessProbe", "readinessProbe"):
            probe = container.get(probe_name) or {}
            action = probe.get("grpc") or probe.get("httpGet") or probe.get("tcpSocket")
            if action and not any(action["port"] in (p["containerPort"], p.get("name")) for p in ports):
                yield Problem(where, f"{container['name']}.{probe_name} probes port {action['port']!r}, not a containerPort")
        args = container.get("args") or []
        health = flag_value(args, "--grpc-health-port")
        grpc_probes = [(container.get(p) or {}).get("grpc") for p in ("startupProbe", "livenessProbe", "readinessProbe")]
        if health and any(g and g["port"] != int(health) for g in grpc_probes):
            yield Problem(where, f"{container['name']}: gRPC probes do not use --grpc-health-port={health}")
        for flag, check in FILE_FLAGS.items():
            path = flag_value(args, flag)
            if path:
                yield from _check_config_file(index, where, ns, container, volumes, flag, path, check)


def check_models_file(text: str) -> Iterator[str]:
    """``epp bbr --models-file``: loaded with the router's own parser, as the pod would."""
    try:
        ModelCatalog(parse_models_yaml(text))
    except CatalogError as error:
        yield str(error)


# File flags of epp containers → the check their file's content must pass.
FILE_FLAGS: dict[str, Callable[[str], Iterator[str]]] = {
    "--config-file": check_endpoint_picker_config,
    "--models-file": check_models_file,
}


def _check_config_file(
    index: Index, where: str, ns: str, container: dict[str, Any], volumes: dict[str, Any], flag: str, path: str,
    check: Callable[[str], Iterator[str]],
) -> Iterator[Problem]:
    """A file flag must name a key of a mounted ConfigMap whose content passes ``check``."""
    file = PurePosixPath(path)
    for mount in container.get("volumeMounts") or []:
        if file.parent != PurePosixPath(mount["mountPath"]):
            continue
        cm_ref = (volumes.get(mount["name"]) or {}).get("configMap")
        cm = index.get("ConfigMap", ns, cm_ref["name"]) if cm_ref else None
        text = (cm or {}).get("data", {}).get(file.name)
        if text is None:
            yield Problem(where, f"{flag}={path}: no key {file.name!r} in the ConfigMap mounted at {mount['mountPath']}")
            return
        for message in check(text):
            yield Problem(object_id(cm or {}), f"{file.name}: {message}")
        return
    yield Problem(where, f"{flag}={path} is not inside any mounted volume")


def check_role_binding(index: Index, binding: dict[str, Any]) -> Iterator[Problem]:
    where, ns = object_id(binding), namespace_of(binding)
    ref = binding["roleRef"]
    role = index.get(ref["kind"], ns if ref["kind"] == "Role" else "", ref["name"])
    if role is None:
        yield Problem(where, f"roleRef {ref['kind']} {ref['name']!r} does not exist")
    for subject in binding.get("subjects") or []:
        if subject["kind"] == "ServiceAccount" and _namespaced(index, "ServiceAccount", subject.get("namespace", ns),
                                                               subject["name"]) is None:
            yield Problem(where, f"subject ServiceAccount {subject['name']!r} does not exist")


def _namespaced(index: Index, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
    """Look up a namespaced object; one rendered without a namespace (a base applied on its own) lands
    in the current namespace, which a ClusterRoleBinding subject has to spell out (``default``)."""
    found = index.get(kind, namespace, name)
    return found if found is not None or namespace != "default" else index.get(kind, "", name)


def check_selects_pods(index: Index, obj: dict[str, Any], selector: dict[str, Any]) -> Iterator[Problem]:
    """NetworkPolicy / PodDisruptionBudget / PodMonitor: the selector must hit real pods."""
    if not index.pods_selected(namespace_of(obj), selector):
        yield Problem(object_id(obj), f"selector {selector} matches no workload")


def check_network_policy(index: Index, policy: dict[str, Any]) -> Iterator[Problem]:
    selector = policy["spec"]["podSelector"]
    pods = index.pods_selected(namespace_of(policy), selector)
    yield from check_selects_pods(index, policy, selector)
    declared = container_ports(pods)
    for rule in policy["spec"].get("ingress") or []:
        for port in rule.get("ports") or []:
            if pods and not any(port["port"] in (p["containerPort"], p.get("name")) for p in declared):
                yield Problem(object_id(policy), f"ingress port {port['port']!r} is not a port of the selected pods")


def check_service_monitor(index: Index, monitor: dict[str, Any]) -> Iterator[Problem]:
    where = object_id(monitor)
    services = [
        s
        for s in index.of_kind("Service")
        if namespace_of(s) == namespace_of(monitor) and selector_matches(monitor["spec"]["selector"], (s.get("metadata") or {}).get("labels") or {})
    ]
    if not services:
        yield Problem(where, "selector matches no Service")
    for endpoint in monitor["spec"].get("endpoints") or []:
        if services and not any(endpoint.get("port") == p.get("name") for s in services for p in s["spec"]["ports"]):
            yield Problem(where, f"endpoint port {endpoint.get('port')!r} is not a named port of the selected Services")
        yield from _check_scrape_credentials(index, monitor, endpoint)


def _check_scrape_credentials(index: Index, monitor: dict[str, Any], endpoint: dict[str, Any]) -> Iterator[Problem]:
    """The Secret key a monitor sends as its bearer token exists (the Operator reads it from the monitor's
    namespace); a ServiceAccount token Secret has its token under ``token`` and needs its ServiceAccount."""
    ref = ((endpoint.get("authorization") or {}).get("credentials")) or endpoint.get("bearerTokenSecret")
    if not ref:
        return
    where, ns = object_id(monitor), namespace_of(monitor)
    secret = index.get("Secret", ns, ref.get("name", ""))
    if secret is None:
        yield Problem(where, f"bearer token Secret {ref.get('name')!r} does not exist")
    elif secret.get("type") == "kubernetes.io/service-account-token":
        account = ((secret["metadata"].get("annotations")) or {}).get("kubernetes.io/service-account.name", "")
        if ref.get("key") != "token":
            yield Problem(where, f"bearer token key {ref.get('key')!r}: a ServiceAccount token Secret keeps it in 'token'")
        if index.get("ServiceAccount", ns, account) is None:
            yield Problem(where, f"token Secret {ref['name']!r} is for ServiceAccount {account!r}, which does not exist")


def check_pod_monitor(index: Index, monitor: dict[str, Any]) -> Iterator[Problem]:
    selector = monitor["spec"]["selector"]
    yield from check_selects_pods(index, monitor, selector)
    declared = container_ports(index.pods_selected(namespace_of(monitor), selector))
    for endpoint in monitor["spec"].get("podMetricsEndpoints") or []:
        if declared and "port" in endpoint and not any(endpoint["port"] == p.get("name") for p in declared):
            yield Problem(object_id(monitor), f"podMetricsEndpoint port {endpoint['port']!r} is not a named container port")
