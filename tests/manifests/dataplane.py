"""Checks of gateway data-plane wiring: Istio DestinationRules and EnvoyFilters, Envoy Gateway
extension policies.

EnvoyFilter patch values are opaque to the CRD schema (preserve-unknown-fields), so the Envoy
filter config inside is parsed with Envoy's own protobuf definitions (``xds-protos``), which is
what istiod does before pushing it; a misspelt field otherwise breaks the gateway's listener.
"""

from __future__ import annotations

import importlib
import pkgutil
import re
from collections.abc import Iterator
from typing import Any

from google.protobuf import descriptor_pool, json_format, message, message_factory

from tests.manifests.crossrefs import Index, check_service_ref, namespace_of
from tests.manifests.schemas import Problem, object_id

_TYPE_URL_PREFIX = "type.googleapis.com/"
_CLUSTER = re.compile(r"^outbound\|(?P<port>\d+)\|[^|]*\|(?P<host>[^|]+)$")


def envoy_message(type_url: str) -> message.Message:
    """An empty message of the Envoy/xDS type named by ``type_url`` (loads its package's protos)."""
    full_name = type_url.removeprefix(_TYPE_URL_PREFIX)
    package = full_name.rpartition(".")[0]
    module = importlib.import_module(package)
    for info in pkgutil.iter_modules(module.__path__):
        if info.name.endswith("_pb2"):
            importlib.import_module(f"{package}.{info.name}")
    descriptor = descriptor_pool.Default().FindMessageTypeByName(full_name)
    return message_factory.GetMessageClass(descriptor)()


def _service_host(host: str, default_ns: str) -> tuple[str, str]:
    """(namespace, name) of a Kubernetes Service host: short name or ``name.ns.svc[.cluster.local]``."""
    parts = host.split(".")
    return (parts[1], parts[0]) if len(parts) > 1 else (default_ns, host)


def check_destination_rule(index: Index, rule: dict[str, Any]) -> Iterator[Problem]:
    ns, name = _service_host(rule["spec"]["host"], namespace_of(rule))
    yield from check_service_ref(index, object_id(rule), ns, name, None)


def check_envoy_filter(index: Index, envoy_filter: dict[str, Any]) -> Iterator[Problem]:
    where = object_id(envoy_filter)
    for i, patch in enumerate(envoy_filter["spec"].get("configPatches") or []):
        typed = ((patch.get("patch") or {}).get("value") or {}).get("typed_config")
        if not typed:
            continue
        config = {k: v for k, v in typed.items() if k != "@type"}
        try:
            parsed = json_format.ParseDict(config, envoy_message(typed["@type"]))
        except (json_format.ParseError, KeyError, ModuleNotFoundError) as error:
            yield Problem(where, f"configPatches[{i}] typed_config does not parse as {typed.get('@type')}: {error}")
            continue
        cluster = _find_cluster_name(json_format.MessageToDict(parsed, preserving_proto_field_name=True))
        if cluster is None:
            continue
        match = _CLUSTER.match(cluster)
        if match is None:
            yield Problem(where, f"configPatches[{i}]: cluster {cluster!r} is not an Istio outbound|PORT||HOST cluster")
            continue
        ns, name = _service_host(match["host"], namespace_of(envoy_filter))
        yield from check_service_ref(index, where, ns, name, int(match["port"]))


def _find_cluster_name(config: Any) -> str | None:
    if isinstance(config, dict):
        if isinstance(config.get("cluster_name"), str):
            return config["cluster_name"]
        return next((c for c in map(_find_cluster_name, config.values()) if c), None)
    return None


def check_extension_policy(index: Index, policy: dict[str, Any]) -> Iterator[Problem]:
    for ext_proc in policy["spec"].get("extProc") or []:
        for ref in ext_proc.get("backendRefs") or []:
            if ref.get("kind", "Service") == "Service" and ref.get("group", "") == "":
                ns = ref.get("namespace", namespace_of(policy))
                yield from check_service_ref(index, object_id(policy), ns, ref["name"], ref.get("port"))
