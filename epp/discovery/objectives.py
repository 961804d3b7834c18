"""InferenceObjective → priority, for the director's admission and flow control (gie-facts C5).

Which API groups are read depends on the pool's group, as the reference pickers pair them:

* pool ``inference.networking.k8s.io`` (v1): ``llm-d.ai/v1alpha2`` (llm-d router, current) first, then
  ``inference.networking.x-k8s.io/v1alpha2`` (GIE ≤ v1.5, removed in v1.6; still used by Envoy AI
  Gateway examples). The llm-d chart grants RBAC on both; an objective name found in the first group
  wins.
* pool ``inference.networking.x-k8s.io`` (v1alpha2): only ``inference.networking.x-k8s.io/v1alpha2``.

An objective counts when ``spec.poolRef.name`` is the pool and ``spec.poolRef.group`` (default
``inference.networking.k8s.io``, as the CRD defaults it) is the pool's group. Unset priority is 0, and
so is an unknown objective. A group whose CRD is not installed answers 404: that is logged once and
retried every ``absent_retry`` seconds (see ``reflector.py``) — never an error for requests.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from epp.discovery.kube_api import JSON, Resource

OBJECTIVE_GROUPS: Mapping[str, tuple[str, ...]] = {
    "inference.networking.k8s.io": ("llm-d.ai", "inference.networking.x-k8s.io"),
    "inference.networking.x-k8s.io": ("inference.networking.x-k8s.io",),
}
OBJECTIVE_VERSION = "v1alpha2"
DEFAULT_POOL_REF_GROUP = "inference.networking.k8s.io"


def objective_resources(pool_group: str, namespace: str, plural: str = "inferenceobjectives") -> list[Resource]:
    """The collections of ``plural`` (objectives, or another kind served beside them) to watch for a
    pool of ``pool_group``, in precedence order."""
    return [Resource(g, OBJECTIVE_VERSION, plural, namespace) for g in OBJECTIVE_GROUPS[pool_group]]


def targets_pool(obj: Mapping[str, Any], pool_name: str, pool_group: str) -> bool:
    """Whether the object's ``spec.poolRef`` names this pool (the group defaults as the CRDs say)."""
    spec = obj.get("spec")
    ref = (spec.get("poolRef") if isinstance(spec, dict) else None) or {}
    return ref.get("name") == pool_name and (ref.get("group") or DEFAULT_POOL_REF_GROUP) == pool_group


class _ObjectiveSet:
    """Reflector handler: name → priority for objectives of one group that target our pool."""

    def __init__(self, pool_name: str, pool_group: str) -> None:
        self.pool_name = pool_name
        self.pool_group = pool_group
        self.priorities: dict[str, int] = {}

    def _priority(self, obj: Mapping[str, Any]) -> int | None:
        if not targets_pool(obj, self.pool_name, self.pool_group):
            return None
        priority = obj["spec"].get("priority")
        return priority if isinstance(priority, int) and not isinstance(priority, bool) else 0

    def replace(self, objects: list[JSON]) -> None:
        self.priorities = {}
        for obj in objects:
            self.apply("ADDED", obj)

    def apply(self, event_type: str, obj: JSON) -> None:
        name = (obj.get("metadata") or {}).get("name")
        if not name:
            return
        priority = None if event_type == "DELETED" else self._priority(obj)
        if priority is None:
            self.priorities.pop(name, None)
        else:
            self.priorities[name] = priority


class ObjectiveIndex:
    """Merged view over the watched groups; :meth:`priority` is what the director calls."""

    def __init__(self, pool_name: str, pool_group: str) -> None:
        self.sets = [_ObjectiveSet(pool_name, pool_group) for _ in OBJECTIVE_GROUPS[pool_group]]

    def priority(self, name: str) -> int:
        """Priority of objective ``name`` for this pool; unknown (or no objective header) → 0."""
        for objective_set in self.sets:
            found = objective_set.priorities.get(name)
            if found is not None:
                return found
        return 0
