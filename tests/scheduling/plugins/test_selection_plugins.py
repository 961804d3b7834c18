"""llm-d's label, attribute, context-length, header-affinity and utilization plugins on crafted
endpoints: each filter filters and each scorer scores by its upstream formula."""

from __future__ import annotations

import pytest

from epp.config import ConfigError, load_scheduler_text
from epp.datastore import EndpointMetrics, EndpointState
from epp.scheduling.framework import CycleState
from epp.scheduling.plugins.filters.endpoint_attribute import EndpointAttributeFilter
from epp.scheduling.plugins.filters.label_selector import LabelSelectorFilter
from epp.scheduling.plugins.filters.utilization import UtilizationFilter
from epp.scheduling.plugins.scorers.context_length_aware import ContextLengthAware, range_score
from epp.scheduling.plugins.scorers.endpoint_attribute import EndpointAttributeScorer
from epp.scheduling.plugins.scorers.header_label_affinity import HeaderLabelAffinityScorer
from tests.conftest import make_request, make_state

HEAD = "apiVersion: llm-d.ai/v1alpha1\nkind: EndpointPickerConfig\nplugins:\n"


def build(plugin_yaml: str, kind: type) -> object:
    scheduler = load_scheduler_text(HEAD + plugin_yaml)
    return next(p for p in scheduler.plugins if isinstance(p, kind))


def labelled(*labels: dict[str, str]) -> list[EndpointState]:
    return [make_state(f"e{i}", address=f"10.0.0.{i + 1}", labels=lab) for i, lab in enumerate(labels)]


def names(endpoints: list[EndpointState]) -> list[str]:
    return [e.name for e in endpoints]


def test_label_selector_match_labels_and_expressions() -> None:
    eps = labelled({"role": "decode", "zone": "a"}, {"role": "prefill"}, {"role": "decode"}, {})
    f = build("- type: label-selector-filter\n  parameters: {matchLabels: {role: decode}}\n", LabelSelectorFilter)
    assert names(f.filter(CycleState(), make_request(), eps)) == ["e0", "e2"]  # type: ignore[attr-defined]
    f = build("- type: label-selector-filter\n  parameters:\n    matchExpressions:\n"
              "    - {key: role, operator: In, values: [decode, prefill]}\n    - {key: zone, operator: DoesNotExist}\n",
              LabelSelectorFilter)
    assert names(f.filter(CycleState(), make_request(), eps)) == ["e1", "e2"]  # type: ignore[attr-defined]
    f = build("- type: label-selector-filter\n  parameters:\n    matchExpressions: [{key: role, operator: NotIn, values: [decode]}]\n",
              LabelSelectorFilter)
    assert names(f.filter(CycleState(), make_request(), eps)) == ["e1", "e3"]  # type: ignore[attr-defined]


@pytest.mark.parametrize(("params", "where"), [
    ("{matchExpressions: [{key: role, operator: In}]}", "matchExpressions[0].values"),
    ("{matchExpressions: [{key: role, operator: Near, values: [x]}]}", "matchExpressions[0].operator"),
    ("{matchExpressions: [{key: role, operator: Exists, values: [x]}]}", "matchExpressions[0].values"),
    ("{matchLabels: {role: 3}}", "matchLabels.role"),
])
def test_label_selector_rejects_malformed_selectors(params: str, where: str) -> None:
    with pytest.raises(ConfigError, match=where.replace("[", r"\[").replace("]", r"\]")):
        build(f"- type: label-selector-filter\n  parameters: {params}\n", LabelSelectorFilter)


def with_attrs(*values: float | None) -> list[EndpointState]:
    eps = labelled(*({} for _ in values))
    for e, v in zip(eps, values):
        if v is not None:
            e.attributes["GPUUtilization"] = v
    return eps


def test_endpoint_attribute_filter_threshold_on_missing_and_fallback() -> None:
    eps = with_attrs(0.2, 0.95, None)
    base = ("- {type: dcgm-extractor}\n- type: endpoint-attribute-filter\n  parameters:\n    attribute: GPUUtilization\n"
            "    producer: dcgm-extractor\n    algorithm: {type: threshold, threshold: {operator: LessThanOrEqual, value: 0.9}}\n")
    f = build(base, EndpointAttributeFilter)
    assert names(f.filter(CycleState(), make_request(), eps)) == ["e0", "e2"]  # type: ignore[attr-defined]
    f = build(base + "    onMissing: Fail\n", EndpointAttributeFilter)
    assert names(f.filter(CycleState(), make_request(), eps)) == ["e0"]  # type: ignore[attr-defined]
    hot = with_attrs(0.99, 0.97)
    assert f.filter(CycleState(), make_request(), hot) == []  # type: ignore[attr-defined]
    f = build(base + "    fallbackOnEmpty: true\n", EndpointAttributeFilter)
    assert f.filter(CycleState(), make_request(), hot) == hot  # type: ignore[attr-defined]


def test_endpoint_attribute_filter_reads_engine_metrics_by_upstream_name() -> None:
    eps = labelled({}, {})
    eps[0].metrics, eps[0].stale = EndpointMetrics(0.0, running=3), False
    eps[1].metrics, eps[1].stale = EndpointMetrics(0.0, running=30), False
    f = build("- type: endpoint-attribute-filter\n  parameters: {attribute: num_requests_running,"
              " algorithm: {type: threshold, threshold: {operator: LessThan, value: 10}}}\n", EndpointAttributeFilter)
    assert names(f.filter(CycleState(), make_request(), eps)) == ["e0"]  # type: ignore[attr-defined]


def test_endpoint_attribute_filter_needs_a_known_producer() -> None:
    with pytest.raises(ConfigError, match="producer"):
        build("- type: endpoint-attribute-filter\n  parameters: {attribute: x, producer: nobody,"
              " algorithm: {type: threshold, threshold: {operator: Equal, value: 1}}}\n", EndpointAttributeFilter)


def test_endpoint_attribute_scorer_fixed_and_adaptive_ranges() -> None:
    eps = with_attrs(0.2, 0.8, None, 1.5)
    fixed = build("- type: endpoint-attribute-scorer\n  parameters: {attributeKey: GPUUtilization, algorithm:"
                  " {type: linear_lower_is_better, normalization: {fixedRange: {min: 0.0, max: 1.0}}}}\n",
                  EndpointAttributeScorer)
    assert fixed.score(CycleState(), make_request(), eps) == pytest.approx([0.8, 0.2, 0.0, 0.0])  # type: ignore[attr-defined]
    adaptive = build("- type: endpoint-attribute-scorer\n  parameters: {attributeKey: GPUUtilization,"
                     " algorithm: {type: linear_higher_is_better}}\n", EndpointAttributeScorer)
    assert adaptive.score(CycleState(), make_request(), eps) == pytest.approx([0.0, 6 / 13, 0.0, 1.0])  # type: ignore[attr-defined]
    same = with_attrs(0.5, 0.5, None)
    assert adaptive.score(CycleState(), make_request(), same) == [1.0, 1.0, 0.0]  # type: ignore[attr-defined]


def test_endpoint_attribute_scorer_rejects_both_normalizations() -> None:
    with pytest.raises(ConfigError, match="at most one"):
        build("- type: endpoint-attribute-scorer\n  parameters: {attributeKey: x, algorithm: {type: linear_lower_is_better,"
              " normalization: {fixedRange: {min: 0, max: 1}, adaptiveRange: {}}}}\n", EndpointAttributeScorer)


def test_context_length_scores_and_filters_by_label_range() -> None:
    label = "llm-d.ai/context-length-range"
    eps = labelled({label: "0-2048"}, {label: "2048-32768"}, {}, {label: "nonsense"})
    req = make_request(prompt=b"x" * 4000)  # 1000 tokens by the 0.25 char rule
    scores = ContextLengthAware().score(CycleState(), req, eps)
    in_range = 0.3 + 0.7 * (0.7 / (1 + 2048 / 10000) + 0.3 * (2048 - 1000) / 2048)
    assert scores == pytest.approx([in_range, 0.3 / (1 + 1048 / 1000), 0.5, 0.0])
    assert range_score(5, 5, 5) == 1.0
    f = build("- type: context-length-aware\n  parameters: {enableFiltering: true}\n", ContextLengthAware)
    assert names(f.filter(CycleState(), req, eps)) == ["e0", "e2"]  # type: ignore[attr-defined]
    assert ContextLengthAware().filter(CycleState(), req, eps) == eps  # scoring only by default


def test_header_label_affinity_scores_matching_label() -> None:
    eps = labelled({"topology.kubernetes.io/zone": "a"}, {"topology.kubernetes.io/zone": "b"}, {})
    s = build("- type: header-label-affinity-scorer\n  parameters: {headerName: X-Preferred-Zone,"
              " labelKey: topology.kubernetes.io/zone}\n", HeaderLabelAffinityScorer)
    req = make_request(headers={"x-preferred-zone": "b"})
    assert s.score(CycleState(), req, eps) == [0.0, 1.0, 0.0]  # type: ignore[attr-defined]
    assert s.score(CycleState(), make_request(), eps) == [0.0, 0.0, 0.0]  # type: ignore[attr-defined]
    with pytest.raises(ConfigError, match="labelKey"):
        build("- type: header-label-affinity-scorer\n  parameters: {headerName: x}\n", HeaderLabelAffinityScorer)


def test_utilization_filter_caps_every_condition_and_falls_back() -> None:
    eps = labelled({}, {}, {}, {})
    metrics = [EndpointMetrics(0.0, running=10, waiting=0, kv_usage=0.5), EndpointMetrics(0.0, running=50),
               EndpointMetrics(0.0, waiting=2), EndpointMetrics(0.0, kv_usage=0.9)]
    for e, m in zip(eps, metrics):
        e.metrics, e.stale = m, False
    text = ("- type: utilization-filter\n  parameters:\n    conditions:\n    - {metric: running-requests, maxValue: 40}\n"
            "    - {metric: waiting-queue, maxValue: 0}\n    - {metric: kv-cache-utilization, maxValue: 0.8}\n")
    f = build(text, UtilizationFilter)
    assert names(f.filter(CycleState(), make_request(), eps)) == ["e0"]  # type: ignore[attr-defined]
    assert f.filter(CycleState(), make_request(), eps[1:]) == []  # type: ignore[attr-defined]
    f = build(text + "    fallbackOnEmpty: true\n", UtilizationFilter)
    assert f.filter(CycleState(), make_request(), eps[1:]) == eps[1:]  # type: ignore[attr-defined]
    eps[0].inflight_requests = 3
    f = build("- type: utilization-filter\n  parameters: {conditions: [{metric: active-requests, maxValue: 2}]}\n", UtilizationFilter)
    assert names(f.filter(CycleState(), make_request(), eps)) == ["e1", "e2", "e3"]  # type: ignore[attr-defined]
    with pytest.raises(ConfigError, match=r"conditions\[0\].metric"):
        build("- type: utilization-filter\n  parameters: {conditions: [{metric: gpu, maxValue: 2}]}\n", UtilizationFilter)
