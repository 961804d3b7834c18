"""``disaggregatedset-rollout-screener`` (llm-d ``requestcontrol/screener/disaggregatedsetrollout``): keep a
request's prefill and decode on one ``DisaggregatedSet`` revision during a rollout.

A screener runs once per request before every scheduling profile, so no later filter can undo it. It
counts the endpoints in ``scope.labelSelector`` by revision (``revisionGating.revisionLabelKey``) and
role (``roleLabelKey``) as they join and leave the pool. With ``revisionGating.mode`` ``sum`` or
``max-role`` a revision is *covered* once every role of ``requireRoles.values`` has an endpoint;
uncovered revisions get no traffic. A request without a strict header then gets one covered revision,
drawn at random with weight = its endpoints over the required roles (``sum``) or its endpoints of the
role with the largest total across covered revisions, ties to the first listed (``max-role``), and
only that revision's endpoints reach the profiles. ``disabled`` skips coverage and the draw.

``headerSelectors`` map a request/response header to a pod label (``name``, ``headerName``,
``labelKey``, ``mode``). ``strict``: a request carrying the header keeps only endpoints whose label
equals it (no match fails closed). ``prefer``: nothing is screened (a ``header-label-affinity-scorer``
applies the preference). Every selector stamps the serving endpoint's label into its header on the
response, so a coordinator can forward the prefill's revision to the decode call.

Nothing left after screening answers 503, as upstream does: never a silent crossing of revisions.
Metrics: ``llm_d_epp_disaggregatedset_strict_header_no_match_total{plugin,selector}`` and
``llm_d_epp_disaggregatedset_revision_gating_share{plugin,revision}`` (0 for an uncovered revision).
"""

from __future__ import annotations

import random
import re
from collections import defaultdict
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry, Counter
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from epp.datastore import Endpoint, EndpointState
from epp.request import LLMRequest
from epp.plugin.typed_name import TypedName
from epp.plugin.params import ParamError, decode_params
from epp.plugin.registry import PluginHandle
from epp.scheduling.plugins.filters.label_selector import label_equals, label_exists, label_in

DISAGGREGATEDSET_ROLLOUT_SCREENER = "disaggregatedset-rollout-screener"
DEFAULT_REVISION_LABEL = "disaggregatedset.x-k8s.io/revision"
DEFAULT_ROLE_LABEL = "disaggregatedset.x-k8s.io/role"
GATING_MODES = ("sum", "max-role", "disabled")
SELECTOR_MODES = ("strict", "prefer")

LabelPredicate = Callable[[Mapping[str, str]], bool]
_TERM = re.compile(r"^\s*(!?)\s*([\w./-]+)\s*(?:(==|=|!=)\s*([\w./-]*)|\s+(in|notin)\s*\(([^)]*)\))?\s*$")


def _split_terms(text: str) -> list[str]:
    """Split a selector on the commas that separate terms, not those inside ``in (a, b)``."""
    terms, depth, start = [], 0, 0
    for i, ch in enumerate(text):
        depth += ch == "("
        depth -= ch == ")"
        if ch == "," and depth == 0:
            terms.append(text[start:i])
            start = i + 1
    terms.append(text[start:])
    return terms


def parse_label_selector(text: str) -> LabelPredicate:
    """A Kubernetes label selector string (``k=v``, ``k!=v``, ``k in (a,b)``, ``k notin (a)``, ``k``, ``!k``)
    as a predicate over a label map; ``ValueError`` names the malformed term."""
    checks: list[LabelPredicate] = []
    for term in _split_terms(text):
        m = _TERM.match(term)
        if m is None or (m.group(1) and (m.group(3) or m.group(5))):
            raise ValueError(f"term {term.strip()!r} is not a label requirement")
        negate, key, op, value, set_op, values = m.groups()
        if op in ("=", "==", "!="):
            checks.append(label_equals(key, value, want=op != "!="))
        elif set_op is not None:
            allowed = frozenset(v.strip() for v in values.split(",") if v.strip())
            if not allowed:
                raise ValueError(f"term {term.strip()!r} needs at least one value")
            checks.append(label_in(key, allowed, want=set_op == "in"))
        else:
            checks.append(label_exists(key, want=not negate))
    return lambda labels: all(check(labels) for check in checks)


@dataclass(frozen=True, slots=True)
class Scope:
    label_selector: str = ""


@dataclass(frozen=True, slots=True)
class RequiredRoles:
    values: list[str] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class RevisionGating:
    mode: str = ""
    require_roles: RequiredRoles = field(default_factory=RequiredRoles)
    revision_label_key: str = DEFAULT_REVISION_LABEL
    role_label_key: str = DEFAULT_ROLE_LABEL

    def __post_init__(self) -> None:
        if self.mode not in GATING_MODES:
            raise ParamError("mode", f"must be one of {'|'.join(GATING_MODES)}, got {self.mode!r}")
        roles = self.require_roles.values
        if self.mode != "disabled" and not roles:
            raise ParamError("requireRoles.values", f"must name at least one role when mode is {self.mode}")
        if any(not r for r in roles) or len(set(roles)) != len(roles):
            raise ParamError("requireRoles.values", "roles must be non-empty and distinct")

    @property
    def active(self) -> bool:
        return self.mode != "disabled"


@dataclass(frozen=True, slots=True)
class HeaderSelector:
    name: str
    header_name: str  # lower-cased: request header keys arrive lower-cased
    label_key: str
    strict: bool


@dataclass(frozen=True, slots=True)
class RolloutParams:
    scope: Scope = field(default_factory=Scope)
    header_selectors: list[dict[str, Any]] = field(default_factory=list)
    revision_gating: RevisionGating | None = None

    def __post_init__(self) -> None:
        if not self.scope.label_selector:
            raise ParamError("scope.labelSelector", "is required")
        try:
            parse_label_selector(self.scope.label_selector)
        except ValueError as err:
            raise ParamError("scope.labelSelector", f"not a valid label selector: {err}") from None
        if self.revision_gating is None:
            raise ParamError("revisionGating", "is required (mode: disabled keeps only the header selectors)")
        self.selectors()

    def selectors(self) -> list[HeaderSelector]:
        result: list[HeaderSelector] = []
        for i, raw in enumerate(self.header_selectors):
            where = f"headerSelectors[{i}]"
            if not isinstance(raw, Mapping):
                raise ParamError(where, "must be a mapping")
            unknown = set(raw) - {"name", "headerName", "labelKey", "mode"}
            if unknown:
                raise ParamError(f"{where}.{sorted(unknown)[0]}", "unknown field (known: name, headerName, labelKey, mode)")
            for key in ("name", "headerName", "labelKey"):
                if not isinstance(raw.get(key), str) or not raw[key].strip():
                    raise ParamError(f"{where}.{key}", "is required")
            if raw.get("mode") not in SELECTOR_MODES:
                raise ParamError(f"{where}.mode", f"must be strict or prefer, got {raw.get('mode')!r}")
            if any(s.name == raw["name"] for s in result):
                raise ParamError(f"{where}.name", f"duplicate selector name {raw['name']!r}")
            result.append(HeaderSelector(raw["name"], raw["headerName"].strip().lower(), raw["labelKey"], raw["mode"] == "strict"))
        return result


def revision_weights(counts: Mapping[str, Mapping[str, int]], gating: RevisionGating) -> dict[str, float]:
    """Each observed revision's weight: 0 unless every required role has an endpoint (``sum``: endpoints
    over the required roles; ``max-role``: endpoints of the role largest across covered revisions)."""
    roles = gating.require_roles.values
    covered = {rev: per_role for rev, per_role in counts.items() if all(per_role.get(r, 0) > 0 for r in roles)}
    weights = dict.fromkeys(counts, 0.0)
    if gating.mode == "sum":
        weights.update({rev: float(sum(per_role[r] for r in roles)) for rev, per_role in covered.items()})
    elif covered:
        totals = [sum(per_role[r] for per_role in covered.values()) for r in roles]
        dominant = roles[totals.index(max(totals))]  # index() keeps the first listed on ties
        weights.update({rev: float(per_role[dominant]) for rev, per_role in covered.items()})
    return weights


class DisaggregatedSetRolloutScreener:
    def __init__(self, name: str, params: RolloutParams, rng: random.Random) -> None:
        self.typed_name = TypedName(DISAGGREGATEDSET_ROLLOUT_SCREENER, name)
        assert params.revision_gating is not None  # RolloutParams requires it
        self.gating = params.revision_gating
        self.selectors = params.selectors()
        self._in_scope = parse_label_selector(params.scope.label_selector)
        self._rng = rng
        self._members: dict[str, tuple[str, str]] = {}  # endpoint name → (revision, role), in scope only
        self._no_match = Counter(
            "llm_d_epp_disaggregatedset_strict_header_no_match_total",
            "Strict header selections that matched no endpoint and failed closed.",
            ["plugin", "selector"], registry=None,
        )

    # membership (the datastore calls these as endpoints join and leave)
    def endpoint_added(self, endpoint: Endpoint) -> None:
        labels = endpoint.labels
        revision = labels.get(self.gating.revision_label_key, "")
        if revision and self._in_scope(labels):
            self._members[endpoint.name] = (revision, labels.get(self.gating.role_label_key, ""))
        else:
            self._members.pop(endpoint.name, None)

    def endpoint_removed(self, endpoint: Endpoint) -> None:
        self._members.pop(endpoint.name, None)

    def counts(self) -> dict[str, dict[str, int]]:
        """Endpoints in scope by revision, then role."""
        counts: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
        for revision, role in self._members.values():
            counts[revision][role] += 1
        return {rev: dict(per_role) for rev, per_role in counts.items()}

    def shares(self) -> dict[str, float]:
        weights = revision_weights(self.counts(), self.gating)
        total = sum(weights.values())
        return {rev: (w / total if total else 0.0) for rev, w in weights.items()}

    def _draw(self, weights: Mapping[str, float]) -> str:
        revisions = sorted(weights)
        x = self._rng.random() * sum(weights.values())
        for revision in revisions:
            x -= weights[revision]
            if x < 0:
                return revision
        return revisions[-1]

    def screen(self, request: LLMRequest, endpoints: list[EndpointState]) -> list[EndpointState]:
        current = endpoints
        headers = request.headers
        if self.gating.active:
            weights = revision_weights(self.counts(), self.gating)
            revision_key = self.gating.revision_label_key
            seen = {e.endpoint.labels.get(revision_key, "") for e in current}
            allowed = {rev: w for rev, w in weights.items() if w > 0 and rev in seen}
            strict_header = any(s.strict and headers.get(s.header_name) for s in self.selectors)
            chosen = self._draw(allowed) if allowed and not strict_header else None
            current = [
                e for e in current
                if (rev := e.endpoint.labels.get(revision_key, "")) in allowed and (chosen is None or rev == chosen)
            ]
        for selector in self.selectors:
            wanted = headers.get(selector.header_name) if selector.strict else None
            if not current or not wanted:
                continue
            current = [e for e in current if e.endpoint.labels.get(selector.label_key) == wanted]
            if not current:
                self._no_match.labels(self.typed_name.name, selector.name).inc()
        return current

    def response_headers(self, request: LLMRequest, endpoint: EndpointState) -> Mapping[str, str]:
        labels = endpoint.endpoint.labels
        return {s.header_name: labels[s.label_key] for s in self.selectors if labels.get(s.label_key)}

    def register_metrics(self, registry: CollectorRegistry) -> None:
        registry.register(self._no_match)
        registry.register(_ShareCollector(self))


class _ShareCollector(Collector):
    def __init__(self, screener: DisaggregatedSetRolloutScreener) -> None:
        self._screener = screener

    def collect(self) -> Iterator[Metric]:
        family = GaugeMetricFamily(
            "llm_d_epp_disaggregatedset_revision_gating_share",
            "Current weighted share (0 to 1) of each observed revision; 0 while a required role is missing.",
            labels=["plugin", "revision"],
        )
        if self._screener.gating.active:
            for revision, share in sorted(self._screener.shares().items()):
                family.add_metric([self._screener.typed_name.name, revision], share)
        yield family


def factory(name: str, params: Mapping[str, Any], handle: PluginHandle) -> DisaggregatedSetRolloutScreener:
    return DisaggregatedSetRolloutScreener(name, decode_params(RolloutParams, params), handle.child_rng())
