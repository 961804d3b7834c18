"""Offline schema validation of rendered Kubernetes objects.

Built-in kinds are checked against the Kubernetes OpenAPI schemas that the
``kubernetes-validate`` wheel ships (strict variant: unknown fields fail, as they do with
``kubectl apply``'s default strict field validation). Custom resources are checked against
the ``openAPIV3Schema`` of the upstream CRDs in ``tests/manifests/crds``, after applying the
schema defaults the API server would apply, because CRD CEL rules see defaulted objects.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import yaml

KUBERNETES_VERSION = "1.32"

try:  # libyaml makes loading the ~1.5 MB of CRDs several times faster.
    _Loader: type = yaml.CSafeLoader
except AttributeError:  # pragma: no cover - pure-Python PyYAML build
    _Loader = yaml.SafeLoader


@dataclass(frozen=True)
class Problem:
    """One finding about one object: ``where`` is ``Kind/namespace/name`` plus a field path."""

    where: str
    message: str

    def __str__(self) -> str:
        return f"{self.where}: {self.message}"


def object_id(obj: dict[str, Any]) -> str:
    meta = obj.get("metadata") or {}
    return f"{obj.get('kind')}/{meta.get('namespace', '-')}/{meta.get('name')}"


@dataclass(frozen=True)
class CrdVersion:
    """One served version of a CRD: its raw structural schema and the JSON-Schema form of it."""

    group: str
    version: str
    kind: str
    namespaced: bool
    schema: dict[str, Any]
    json_schema: dict[str, Any]


def _to_json_schema(node: Any) -> Any:
    """Translate a structural OpenAPI v3 schema into JSON Schema with API-server semantics.

    Objects with declared properties are closed (unknown fields are rejected by strict field
    validation) unless marked ``x-kubernetes-preserve-unknown-fields``; ``nullable`` admits null;
    int-or-string admits both.
    """
    if isinstance(node, list):
        return [_to_json_schema(item) for item in node]
    if not isinstance(node, dict):
        return node
    out = {key: _to_json_schema(value) for key, value in node.items() if not key.startswith("x-kubernetes-")}
    if node.get("x-kubernetes-int-or-string"):
        out.pop("type", None)
        out.pop("anyOf", None)
        out["type"] = ["integer", "string"]
    if "properties" in node and "additionalProperties" not in node and not node.get("x-kubernetes-preserve-unknown-fields"):
        out["additionalProperties"] = False
    if node.get("nullable") and isinstance(out.get("type"), str):
        out["type"] = [out["type"], "null"]
    out.pop("nullable", None)
    return out


class CrdCatalog:
    """Every served version of every CRD found in a folder, keyed by (group, version, kind)."""

    def __init__(self, versions: list[CrdVersion]) -> None:
        self._by_key = {(v.group, v.version, v.kind): v for v in versions}

    @classmethod
    def load(cls, folder: Path) -> CrdCatalog:
        versions: list[CrdVersion] = []
        for path in sorted(folder.rglob("*.yaml")):
            for doc in yaml.load_all(path.read_text(), Loader=_Loader):
                if not doc or doc.get("kind") != "CustomResourceDefinition":
                    continue
                spec = doc["spec"]
                for ver in spec["versions"]:
                    if not ver.get("served", False):
                        continue
                    schema = ver["schema"]["openAPIV3Schema"]
                    json_schema = _to_json_schema(schema)
                    # The API server always accepts these at the root, even when the CRD omits them.
                    for key in ("apiVersion", "kind", "metadata"):
                        json_schema.setdefault("properties", {}).setdefault(key, {"type": "object" if key == "metadata" else "string"})
                    versions.append(
                        CrdVersion(
                            group=spec["group"],
                            version=ver["name"],
                            kind=spec["names"]["kind"],
                            namespaced=spec["scope"] == "Namespaced",
                            schema=schema,
                            json_schema=json_schema,
                        )
                    )
        return cls(versions)

    def find(self, api_version: str, kind: str) -> CrdVersion | None:
        group, _, version = api_version.rpartition("/")
        return self._by_key.get((group, version, kind))

    def groups(self) -> set[str]:
        return {group for group, _, _ in self._by_key}


def apply_defaults(value: Any, schema: dict[str, Any]) -> Any:
    """Return a copy of ``value`` with structural-schema defaults filled in, as the API server does."""
    value = copy.deepcopy(value)
    _default_in_place(value, schema)
    return value


def _default_in_place(value: Any, schema: dict[str, Any]) -> None:
    if isinstance(value, dict):
        props = schema.get("properties") or {}
        for key, sub in props.items():
            if key not in value and "default" in sub:
                value[key] = copy.deepcopy(sub["default"])
            if key in value:
                _default_in_place(value[key], sub)
        extra = schema.get("additionalProperties")
        if isinstance(extra, dict):
            for key in value.keys() - props.keys():
                _default_in_place(value[key], extra)
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        for item in value:
            _default_in_place(item, schema["items"])


def _path(error: jsonschema.ValidationError) -> str:
    return ".".join(str(part) for part in error.absolute_path) or "<root>"


def validate_custom(obj: dict[str, Any], crd: CrdVersion) -> Iterator[Problem]:
    """Schema errors of a custom resource (defaults applied first), plus scope errors.

    A namespaced object without a namespace is fine (kubectl applies it to the current one);
    a cluster-scoped object with a namespace means kustomize did not know the kind's scope.
    """
    where = object_id(obj)
    if not crd.namespaced and (obj.get("metadata") or {}).get("namespace"):
        yield Problem(where, "is cluster-scoped but has a namespace")
    validator = jsonschema.Draft4Validator(crd.json_schema)
    for error in sorted(validator.iter_errors(apply_defaults(obj, crd.schema)), key=str):
        yield Problem(where, f"{_path(error)}: {error.message}")


def validate_builtin(obj: dict[str, Any]) -> Iterator[Problem]:
    """Schema errors of a built-in kind against the Kubernetes OpenAPI schema (strict)."""
    where = object_id(obj)
    try:
        kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)
    except kubernetes_validate.ValidationError as error:
        yield Problem(where, f"{_path(error)}: {error.message}")
    except kubernetes_validate.SchemaNotFoundError:
        yield Problem(where, f"no schema for {obj.get('apiVersion')} {obj.get('kind')} in Kubernetes {KUBERNETES_VERSION}")
