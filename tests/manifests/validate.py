"""Render every kustomization under ``manifests/`` and validate what it would apply, offline.

Usage (``make manifests-check`` runs the first form)::

    python -m tests.manifests.validate            # every non-Component kustomization
    python -m tests.manifests.validate DIR [...]  # chosen kustomization directories

Per object: schema (built-in kinds: Kubernetes 1.32 OpenAPI; custom resources: the upstream
CRDs in tests/manifests/crds, with their CEL rules), then cross-references between objects.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from tests.manifests import crossrefs, dataplane, podrefs
from tests.manifests.cel_rules import CelRunner, CelStats
from tests.manifests.schemas import CrdCatalog, Problem, apply_defaults, object_id, validate_builtin, validate_custom

REPO = Path(__file__).resolve().parents[2]
MANIFESTS = REPO / "manifests"
CRD_DIR = Path(__file__).resolve().parent / "crds"
# GatewayClasses that the gateway installation creates itself (Istio makes `istio`).
INSTALLER_GATEWAY_CLASSES = frozenset({"istio"})

Check = Callable[[crossrefs.Index, dict[str, Any]], Iterator[Problem]]


def _pdb(index: crossrefs.Index, obj: dict[str, Any]) -> Iterator[Problem]:
    return podrefs.check_selects_pods(index, obj, obj["spec"]["selector"])


def _gateway_class_check(known: frozenset[str]) -> Check:
    """Gateways must use a class that exists: rendered with them, installed once per cluster
    (``manifests/cluster``), or created by the gateway itself."""

    def check(index: crossrefs.Index, gateway: dict[str, Any]) -> Iterator[Problem]:
        name = gateway["spec"]["gatewayClassName"]
        if name not in known and index.get("GatewayClass", "", name) is None:
            yield Problem(object_id(gateway), f"GatewayClass {name!r} is neither shipped nor created by the gateway install")

    return check


CHECKS: dict[str, tuple[Check, ...]] = {
    "Service": (crossrefs.check_service,),
    "InferencePool": (crossrefs.check_pool,),
    "HTTPRoute": (crossrefs.check_route,),
    "AuthPolicy": (crossrefs.check_policy_targets,),
    "RateLimitPolicy": (crossrefs.check_policy_targets,),
    "TokenRateLimitPolicy": (crossrefs.check_policy_targets,),
    "EnvoyExtensionPolicy": (crossrefs.check_policy_targets, dataplane.check_extension_policy),
    "BackendTrafficPolicy": (crossrefs.check_policy_targets,),
    "EnvoyFilter": (crossrefs.check_policy_targets, dataplane.check_envoy_filter),
    "DestinationRule": (dataplane.check_destination_rule,),
    "Deployment": (podrefs.check_workload,),
    "RoleBinding": (podrefs.check_role_binding,),
    "ClusterRoleBinding": (podrefs.check_role_binding,),
    "NetworkPolicy": (podrefs.check_network_policy,),
    "PodDisruptionBudget": (_pdb,),
    "ServiceMonitor": (podrefs.check_service_monitor,),
    "PodMonitor": (podrefs.check_pod_monitor,),
}


class RenderError(Exception):
    """kustomize refused to build the directory."""


def render(directory: Path) -> list[dict[str, Any]]:
    """The objects ``kubectl kustomize DIR`` would hand to ``kubectl apply``."""
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        raise RenderError("kubectl is not installed")
    result = subprocess.run([kubectl, "kustomize", str(directory)], capture_output=True, text=True, timeout=120, check=False)
    if result.returncode != 0:
        raise RenderError(f"kubectl kustomize {directory} failed: {result.stderr.strip()}")
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def cluster_objects(root: Path = MANIFESTS / "cluster") -> list[dict[str, Any]]:
    """What the once-per-cluster kustomizations install (GatewayClasses, the Kuadrant CR)."""
    return [obj for directory in kustomizations(root) for obj in render(directory)]


def kustomizations(root: Path = MANIFESTS) -> list[Path]:
    """Every directory under ``root`` whose kustomization can be built on its own (not a Component)."""
    found = []
    for file in sorted(root.rglob("kustomization.yaml")):
        if (yaml.safe_load(file.read_text()) or {}).get("kind") != "Component":
            found.append(file.parent)
    return found


@dataclass
class Report:
    objects: int = 0
    problems: list[Problem] = field(default_factory=list)
    cel: CelStats = field(default_factory=CelStats)


class Validator:
    """Loads the CRDs once; validates any number of rendered object sets."""

    def __init__(self, crd_dir: Path = CRD_DIR, cluster_objects: Iterable[dict[str, Any]] = ()) -> None:
        self.catalog = CrdCatalog.load(crd_dir)
        self._custom_groups = self.catalog.groups()
        classes = {o["metadata"]["name"] for o in cluster_objects if o["kind"] == "GatewayClass"}
        self._checks = dict(CHECKS, Gateway=(_gateway_class_check(INSTALLER_GATEWAY_CLASSES | classes),))

    def validate_objects(self, objects: Iterable[dict[str, Any]]) -> Report:
        objects = list(objects)
        report = Report(objects=len(objects))
        cel = CelRunner()
        for obj in objects:
            report.problems.extend(self._schema_problems(obj, cel))
        index = crossrefs.Index(objects)
        for obj in objects:
            for check in self._checks.get(obj["kind"], ()):
                report.problems.extend(check(index, obj))
        report.cel = cel.stats
        return report

    def validate_dir(self, directory: Path) -> Report:
        return self.validate_objects(render(directory))

    def _schema_problems(self, obj: dict[str, Any], cel: CelRunner) -> Iterator[Problem]:
        group = str(obj.get("apiVersion", "")).rpartition("/")[0]
        if group not in self._custom_groups:
            yield from validate_builtin(obj)
            return
        crd = self.catalog.find(obj["apiVersion"], obj["kind"])
        if crd is None:
            yield Problem(object_id(obj), f"no served CRD version for {obj['apiVersion']} {obj['kind']}")
            return
        schema_problems = list(validate_custom(obj, crd))
        yield from schema_problems
        if not schema_problems:  # CEL assumes a schema-valid object, as the API server does
            yield from cel.check(object_id(obj), apply_defaults(obj, crd.schema), crd.schema)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dirs", nargs="*", type=Path, help="kustomization directories (default: all under manifests/)")
    args = parser.parse_args(argv)
    validator = Validator(cluster_objects=cluster_objects())
    total = CelStats()
    failed = False
    for directory in args.dirs or kustomizations():
        try:
            report = validator.validate_dir(directory)
        except RenderError as error:
            print(f"FAIL {directory}: {error}")
            failed = True
            continue
        total.merge(report.cel)
        status = "FAIL" if report.problems else "ok  "
        print(f"{status} {directory.relative_to(REPO) if directory.is_relative_to(REPO) else directory}: {report.objects} objects")
        for problem in report.problems:
            print(f"     - {problem}")
        failed |= bool(report.problems)
    print(f"CEL: {len(total.ran)} distinct rules ran ({sum(total.ran.values())} evaluations); {len(total.skipped)} not run:")
    for rule, reason in sorted(total.skipped.items()):
        print(f"     - {reason}: {' '.join(rule.split())[:100]}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
