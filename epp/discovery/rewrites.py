"""InferenceModelRewrite → the model a request is sent to (gie-facts A7), kept current from the API server.

A rewrite object (``spec.poolRef`` + ``spec.rules[]``) applies when its pool reference names our pool,
exactly as InferenceObjectives do (see ``objectives.py``: same API groups per pool group, same
precedence between groups). Each rule has ``matches[].model {type: Exact, value}`` and weighted
``targets[] {modelRewrite, weight}``. For an incoming model name the reference picks one rule:

* a rule listing that exact model beats a *generic* rule (no ``matches``: every model);
* among candidates the oldest object (``metadata.creationTimestamp``) wins; epp breaks remaining ties
  by group order, then namespace/name, then rule order, so the choice never depends on event order.

The chosen rule's target is drawn at random by weight; without weights uniformly. When only some
targets carry a weight, the unweighted ones are never chosen (the reference warns and does the same).
Rules the CRD would reject (no usable target, unknown match type) are skipped, never fatal: a rule
whose every match is unusable is dropped rather than turned into a generic rule.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from epp.discovery.kube_api import JSON, Resource
from epp.discovery.objectives import OBJECTIVE_GROUPS, objective_resources, targets_pool

log = logging.getLogger(__name__)

REWRITE_PLURAL = "inferencemodelrewrites"


def rewrite_resources(pool_group: str, namespace: str) -> list[Resource]:
    """The rewrite collections to watch for a pool of ``pool_group``, in precedence order."""
    return objective_resources(pool_group, namespace, REWRITE_PLURAL)


@dataclass(frozen=True, slots=True)
class RewriteTarget:
    model: str
    weight: int | None


@dataclass(frozen=True, slots=True)
class RewriteRule:
    """One usable rule; ``models`` empty means generic. ``order`` sorts by precedence (lowest wins)."""

    name: str
    models: frozenset[str]
    targets: tuple[RewriteTarget, ...]
    order: tuple[str, int, str, int]

    def choose(self, rng: random.Random) -> str:
        """A target model, drawn by weight (uniformly when no target has a weight)."""
        weights = [t.weight or 0 for t in self.targets]
        if not any(weights):
            return rng.choice(self.targets).model
        return rng.choices(self.targets, weights=weights)[0].model


def _targets(raw: object) -> tuple[RewriteTarget, ...]:
    out = []
    for item in raw if isinstance(raw, list) else []:
        model = item.get("modelRewrite") if isinstance(item, dict) else None
        if not isinstance(model, str) or not model:
            continue
        weight = item.get("weight")
        usable = isinstance(weight, int) and not isinstance(weight, bool) and weight > 0
        out.append(RewriteTarget(model, weight if usable else None))
    return tuple(out)


def _models(raw: object) -> frozenset[str] | None:
    """Exact model names a rule matches; empty = generic; ``None`` = matches given but none usable."""
    matches = raw if isinstance(raw, list) else []
    models = set()
    for match in matches:
        model = match.get("model") if isinstance(match, dict) else None
        if not isinstance(model, dict) or model.get("type", "Exact") != "Exact":
            continue
        value = model.get("value")
        if isinstance(value, str) and value:
            models.add(value)
    if matches and not models:
        return None
    return frozenset(models)


def parse_rules(obj: Mapping[str, Any], group_rank: int = 0) -> list[RewriteRule]:
    """The usable rules of one InferenceModelRewrite object (pool scoping is the caller's job)."""
    meta = obj.get("metadata") or {}
    name = str(meta.get("name") or "")
    qualified = f"{meta.get('namespace') or ''}/{name}"
    created = str(meta.get("creationTimestamp") or "")
    spec = obj.get("spec") or {}
    rules = spec.get("rules") if isinstance(spec, dict) else None
    out = []
    for index, rule in enumerate(rules if isinstance(rules, list) else []):
        if not isinstance(rule, dict):
            continue
        models, targets = _models(rule.get("matches")), _targets(rule.get("targets"))
        if models is None or not targets:
            log.warning("InferenceModelRewrite %s: rule %d has no usable %s; skipped", qualified, index,
                        "match" if models is None else "target")
            continue
        out.append(RewriteRule(name, models, targets, (created, group_rank, qualified, index)))
    return out


class RewriteTable:
    """Rules by precedence: ``rule_for(model)`` is the one the reference would apply."""

    def __init__(self, rules: Iterable[RewriteRule] = ()) -> None:
        self.exact: dict[str, RewriteRule] = {}
        self.generic: RewriteRule | None = None
        for rule in sorted(rules, key=lambda r: r.order):
            if not rule.models:
                self.generic = self.generic or rule
            for model in rule.models:
                self.exact.setdefault(model, rule)

    def rule_for(self, model: str) -> RewriteRule | None:
        return self.exact.get(model) or self.generic


class _RewriteSet:
    """Reflector handler: object name → rules, for the rewrites of one group that target our pool."""

    def __init__(self, pool_name: str, pool_group: str, rank: int, changed: Callable[[], None]) -> None:
        self.pool_name = pool_name
        self.pool_group = pool_group
        self.rank = rank
        self.rules: dict[str, list[RewriteRule]] = {}
        self._changed = changed

    def _set(self, event_type: str, obj: JSON) -> None:
        name = (obj.get("metadata") or {}).get("name")
        if not name:
            return
        rules = [] if event_type == "DELETED" or not targets_pool(obj, self.pool_name, self.pool_group) else parse_rules(obj, self.rank)
        if rules:
            self.rules[name] = rules
        else:
            self.rules.pop(name, None)

    def replace(self, objects: list[JSON]) -> None:
        self.rules = {}
        for obj in objects:
            self._set("ADDED", obj)
        self._changed()

    def apply(self, event_type: str, obj: JSON) -> None:
        self._set(event_type, obj)
        self._changed()


class ModelRewrites:
    """The director's rewriter: ``resolve(model)`` → ``(rewrite name, target model)`` or ``None``.

    The table is replaced whole on every change, so a request does one dict lookup and one random draw.
    """

    def __init__(self, rules: Iterable[RewriteRule] = (), rng: random.Random | None = None) -> None:
        self.table = RewriteTable(rules)
        self._rng = rng or random.Random()

    def replace_rules(self, rules: Iterable[RewriteRule]) -> None:
        self.table = RewriteTable(rules)

    def resolve(self, model: str) -> tuple[str, str] | None:
        rule = self.table.rule_for(model)
        if rule is None:
            return None
        return rule.name, rule.choose(self._rng)


class RewriteWatch:
    """Keeps ``rewrites`` equal to the pool's InferenceModelRewrites: ``sets`` (one per watched group, in
    ``rewrite_resources`` order) are the reflector handlers."""

    def __init__(self, pool_name: str, pool_group: str, rewrites: ModelRewrites) -> None:
        self.rewrites = rewrites
        self.sets = [_RewriteSet(pool_name, pool_group, rank, self._rebuild)
                     for rank in range(len(OBJECTIVE_GROUPS[pool_group]))]

    def _rebuild(self) -> None:
        self.rewrites.replace_rules(rule for s in self.sets for rules in s.rules.values() for rule in rules)
