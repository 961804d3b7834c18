"""EndpointPickerConfig decoding: the reference's sample, every section, and bad configs naming their field."""

from __future__ import annotations

import textwrap

import pytest

from epp.config import ConfigError, parse_config_text
from epp.config.model import PluginRef

GIE_SAMPLE = """\
apiVersion: llm-d.ai/v1alpha1
kind: EndpointPickerConfig
plugins:
- {type: queue-scorer}
- {type: kv-cache-utilization-scorer}
- {name: prefix, type: prefix-cache-scorer}
- {name: top2, type: max-score-picker, parameters: {maxNumOfEndpoints: 2}}
schedulingProfiles:
- name: default
  plugins:
  - {pluginRef: queue-scorer, weight: 2}
  - {pluginRef: kv-cache-utilization-scorer, weight: 2}
  - {pluginRef: prefix, weight: 3}
  - {pluginRef: top2}
"""

FULL = """\
apiVersion: inference.networking.x-k8s.io/v1alpha1
kind: EndpointPickerConfig
featureGates: [flowControl, haPopulateNonLeaderDatastore=false]
plugins:
- {type: metrics-data-source, parameters: {scheme: http, path: /metrics}}
- {type: core-metrics-extractor}
- {type: utilization-detector, parameters: {queueDepthThreshold: 8, metricsStalenessThreshold: 500ms}}
- {type: global-strict-fairness-policy}
- {type: fcfs-ordering-policy}
- {type: queue-scorer}
dataLayer:
  sources:
  - pluginRef: metrics-data-source
    extractors: [{pluginRef: core-metrics-extractor}]
  injectDefaults: false
flowControl:
  maxBytes: 1Gi
  maxRequests: 5000
  defaultRequestTTL: 60s
  noEndpointRequestTTL: 1m30s
  defaultPriorityBand: {maxRequests: 100, fairnessPolicyRef: global-strict-fairness-policy}
  priorityBands:
  - {priority: 10, maxBytes: 1048576, orderingPolicyRef: fcfs-ordering-policy}
  saturationDetector: {pluginRef: utilization-detector}
  enableEviction: true
"""


def test_gie_sample_config() -> None:
    config = parse_config_text(GIE_SAMPLE)
    assert [(p.name, p.type) for p in config.plugins] == [
        ("queue-scorer", "queue-scorer"),
        ("kv-cache-utilization-scorer", "kv-cache-utilization-scorer"),
        ("prefix", "prefix-cache-scorer"),
        ("top2", "max-score-picker"),
    ]
    assert config.plugins[3].parameters == {"maxNumOfEndpoints": 2}
    (profile,) = config.scheduling_profiles
    assert profile.plugins[2] == PluginRef("prefix", 3.0) and profile.plugins[3] == PluginRef("top2", None)


def test_pass_through_sections_are_typed() -> None:
    config = parse_config_text(FULL)
    assert config.feature_gates == {"flowControl": True, "haPopulateNonLeaderDatastore": False}
    assert config.gate("flowControl") and not config.gate("other")
    assert config.data_layer is not None and config.data_layer.sources[0].extractors == ("core-metrics-extractor",)
    assert config.data_layer.inject_defaults is False
    fc = config.flow_control
    assert fc is not None
    assert (fc.max_bytes, fc.max_requests, fc.default_request_ttl, fc.no_endpoint_request_ttl) == (2**30, 5000, 60.0, 90.0)
    assert fc.default_priority_band is not None and fc.default_priority_band.max_requests == 100
    assert fc.priority_bands[0].priority == 10 and fc.saturation_detector == "utilization-detector" and fc.enable_eviction


BAD = [
    ("apiVersion: v1\nkind: EndpointPickerConfig\n", "apiVersion"),
    ("apiVersion: llm-d.ai/v1alpha1\nkind: Pod\n", "kind"),
    ("apiVersion: llm-d.ai/v1alpha1\n", "kind"),
    ("apiVersion: llm-d.ai/v1alpha1\nkind: EndpointPickerConfig\nplugin: []\n", "plugin"),
    ("apiVersion: llm-d.ai/v1alpha1\nkind: EndpointPickerConfig\nplugins: {type: x}\n", "plugins"),
    ("apiVersion: llm-d.ai/v1alpha1\nkind: EndpointPickerConfig\nplugins: [{name: a}]\n", "plugins[0].type"),
    ("apiVersion: llm-d.ai/v1alpha1\nkind: EndpointPickerConfig\nplugins: [{type: a, params: {}}]\n", "plugins[0].params"),
    ("apiVersion: llm-d.ai/v1alpha1\nkind: EndpointPickerConfig\nplugins: [{type: a, parameters: [1]}]\n", "plugins[0].parameters"),
    ("apiVersion: llm-d.ai/v1alpha1\nkind: EndpointPickerConfig\nplugins: [{type: a}, {type: a}]\n", "plugins[1].name"),
    (
        "apiVersion: llm-d.ai/v1alpha1\nkind: EndpointPickerConfig\nplugins: [{type: a}, {type: b}, {type: c}]\n"
        "schedulingProfiles: [{name: p, plugins: [{pluginRef: a}, {pluginRef: b}, {pluginRef: c, weight: high}]}]\n",
        "schedulingProfiles[0].plugins[2].weight",
    ),
    ("apiVersion: llm-d.ai/v1alpha1\nkind: EndpointPickerConfig\nschedulingProfiles: [{plugins: []}]\n", "schedulingProfiles[0].name"),
    ("apiVersion: llm-d.ai/v1alpha1\nkind: EndpointPickerConfig\nschedulingProfiles: [{name: p}, {name: p}]\n", "schedulingProfiles[1].name"),
    ("apiVersion: llm-d.ai/v1alpha1\nkind: EndpointPickerConfig\nfeatureGates: [flowControl=maybe]\n", "featureGates[0]"),
    ("apiVersion: llm-d.ai/v1alpha1\nkind: EndpointPickerConfig\ndataLayer: {sources: [{pluginRef: nope}]}\n", "dataLayer.sources[0].pluginRef"),
    ("apiVersion: llm-d.ai/v1alpha1\nkind: EndpointPickerConfig\ndataLayer: {injectDefaults: 1}\n", "dataLayer.injectDefaults"),
    ("apiVersion: llm-d.ai/v1alpha1\nkind: EndpointPickerConfig\nflowControl: {maxBytes: lots}\n", "flowControl.maxBytes"),
    ("apiVersion: llm-d.ai/v1alpha1\nkind: EndpointPickerConfig\nflowControl: {defaultRequestTTL: soon}\n", "flowControl.defaultRequestTTL"),
    ("apiVersion: llm-d.ai/v1alpha1\nkind: EndpointPickerConfig\nflowControl: {priorityBands: [{maxRequests: 1}]}\n", "flowControl.priorityBands[0].priority"),
    ("apiVersion: llm-d.ai/v1alpha1\nkind: EndpointPickerConfig\nflowControl: {maxRequests: -1}\n", "flowControl.maxRequests"),
    ("apiVersion: llm-d.ai/v1alpha1\nkind: EndpointPickerConfig\nflowControl: {saturationDetector: {pluginRef: x}}\n", "flowControl.saturationDetector.pluginRef"),
    ("apiVersion: llm-d.ai/v1alpha1\nkind: EndpointPickerConfig\nrequestHandler: {parsers: [{ref: x}]}\n", "requestHandler.parsers[0].ref"),
]


@pytest.mark.parametrize(("text", "path"), BAD, ids=[p for _, p in BAD])
def test_bad_configs_name_their_field(text: str, path: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_config_text(text)
    assert err.value.path == path
    assert str(err.value).startswith(f"{path}: ")


def test_weight_type_error_reads_like_the_reference() -> None:
    text = BAD[9][0]
    with pytest.raises(ConfigError, match=r"^schedulingProfiles\[0\]\.plugins\[2\]\.weight: must be a number$"):
        parse_config_text(text)


def test_duplicate_keys_and_bad_yaml_are_errors() -> None:
    dup = textwrap.dedent("""\
        apiVersion: llm-d.ai/v1alpha1
        kind: EndpointPickerConfig
        plugins: []
        plugins: []
        """)
    with pytest.raises(ConfigError, match="duplicate key 'plugins'"):
        parse_config_text(dup)
    with pytest.raises(ConfigError, match="invalid YAML"):
        parse_config_text("apiVersion: [unclosed\n")
    with pytest.raises(ConfigError, match="must be a mapping"):
        parse_config_text("- just a list\n")


def test_flow_control_quantities_v1_and_inline_detectors() -> None:
    from epp.config import load_scheduler_text
    from epp.scheduling.saturation import UtilizationDetector

    config = parse_config_text(textwrap.dedent("""\
        apiVersion: llm-d.ai/v1
        kind: EndpointPickerConfig
        flowControl:
          maxBytes: 10Gi
          maxRequests: 1k
          priorityBands:
          - {priority: 100, maxRequests: "500"}
          saturationDetector: {queueDepthThreshold: 7, metricsStalenessThreshold: 150ms}
        """))
    fc = config.flow_control
    assert fc is not None and (fc.max_bytes, fc.max_requests) == (10 * 2**30, 1000)
    assert fc.priority_bands[0].max_requests == 500 and fc.saturation_detector is None
    assert config.saturation_detector == {"queueDepthThreshold": 7, "metricsStalenessThreshold": "150ms"}
    detector = load_scheduler_text(
        "apiVersion: inference.networking.x-k8s.io/v1alpha1\nkind: EndpointPickerConfig\n"
        "saturationDetector: {queueDepthThreshold: 3, kvCacheUtilThreshold: 0.5}\n").saturation_detector
    assert isinstance(detector, UtilizationDetector)  # GIE's deprecated top-level section
    assert (detector.params.queue_depth_threshold, detector.params.kv_cache_util_threshold) == (3, 0.5)
    with pytest.raises(ConfigError, match=r"saturationDetector.queueDepth: unknown field"):
        parse_config_text("apiVersion: llm-d.ai/v1\nkind: EndpointPickerConfig\nsaturationDetector: {queueDepth: 3}\n")
    with pytest.raises(ConfigError, match=r"saturationDetector.kvCacheUtilThreshold"):
        load_scheduler_text("apiVersion: llm-d.ai/v1\nkind: EndpointPickerConfig\n"
                            "saturationDetector: {kvCacheUtilThreshold: 2}\n")
