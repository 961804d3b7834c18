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


# -- upstream's other spellings: llm-d.ai/v1, deprecated top-level fields, GIE's `data` ----------------------

def _upstream(extra: str, api_version: str = "llm-d.ai/v1") -> str:
    return f"apiVersion: {api_version}\nkind: EndpointPickerConfig\nplugins:\n- {{type: queue-scorer}}\n" \
           "- {type: utilization-detector}\n- {name: p, type: openai-parser}\n" + textwrap.dedent(extra)


def test_llm_d_v1_and_deprecated_api_versions_load(caplog: pytest.LogCaptureFixture) -> None:
    assert parse_config_text(_upstream("")).api_version == "llm-d.ai/v1"
    with caplog.at_level("WARNING", "epp.config"):
        parse_config_text(_upstream("", "config.apix.gateway-api-inference-extension.sigs.k8s.io/v1alpha1"))
    assert [r.getMessage() for r in caplog.records] == [
        "config: apiVersion config.apix.gateway-api-inference-extension.sigs.k8s.io/v1alpha1 is deprecated; use llm-d.ai/v1alpha1"]


def test_top_level_parser_moves_to_request_handler_with_one_warning(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level("WARNING", "epp.config"):
        config = parse_config_text(_upstream("parser: {pluginRef: p}\n"))
    assert config.request_handler is not None and config.request_handler.parsers == ("p",)
    assert len(caplog.records) == 1 and "top-level 'parser' is deprecated" in caplog.records[0].getMessage()
    both = parse_config_text(_upstream("parser: {pluginRef: nope}\nrequestHandler: {parsers: [{pluginRef: p}]}\n"))
    assert both.request_handler is not None and both.request_handler.parsers == ("p",)
    single = parse_config_text(_upstream("requestHandler: {parser: {pluginRef: p}}\n"))
    assert single.request_handler is not None and single.request_handler.parsers == ("p",)
    with pytest.raises(ConfigError, match="^requestHandler.parsers\\[0\\].pluginRef: no plugin named 'nope'"):
        parse_config_text(_upstream("parser: {pluginRef: nope}\n"))


def test_saturation_detector_plugin_ref_moves_to_flow_control_unless_set(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level("WARNING", "epp.config"):
        config = parse_config_text(_upstream("saturationDetector: {pluginRef: utilization-detector}\n"))
    assert config.flow_control is not None and config.flow_control.saturation_detector == "utilization-detector"
    assert len(caplog.records) == 1 and "top-level 'saturationDetector' is deprecated" in caplog.records[0].getMessage()
    config = parse_config_text(_upstream(
        "saturationDetector: {pluginRef: queue-scorer}\nflowControl: {saturationDetector: {pluginRef: utilization-detector}}\n"))
    assert config.flow_control is not None and config.flow_control.saturation_detector == "utilization-detector"
    with pytest.raises(ConfigError, match="^saturationDetector: give either pluginRef or thresholds"):
        parse_config_text(_upstream("saturationDetector: {pluginRef: utilization-detector, queueDepthThreshold: 3}\n"))


def test_gie_saturation_thresholds_become_the_default_detectors_parameters() -> None:
    from epp.config import load_scheduler_text
    from epp.scheduling.saturation import UtilizationDetector

    text = """\
    apiVersion: inference.networking.x-k8s.io/v1alpha1
    kind: EndpointPickerConfig
    plugins: [{type: queue-scorer}]
    saturationDetector: {queueDepthThreshold: 9, kvCacheUtilThreshold: 0.5, metricsStalenessThreshold: 150ms}
    """
    detector = load_scheduler_text(textwrap.dedent(text)).saturation_detector
    assert isinstance(detector, UtilizationDetector)
    assert (detector.params.queue_depth_threshold, detector.params.kv_cache_util_threshold,
            detector.params.metrics_staleness_threshold) == (9, 0.5, 0.15)
    with pytest.raises(ConfigError, match="^saturationDetector.kvCacheUtilThreshold: must be in"):
        load_scheduler_text(textwrap.dedent(text).replace("0.5", "1.5"))
    with pytest.raises(ConfigError, match="^saturationDetector.queueDepth: unknown field"):
        load_scheduler_text(textwrap.dedent(text).replace("queueDepthThreshold", "queueDepth"))


def test_gie_data_section_is_the_data_layer_and_llm_d_multi_replica_fields_decode() -> None:
    text = """\
    apiVersion: inference.networking.x-k8s.io/v1alpha1
    kind: EndpointPickerConfig
    plugins: [{type: metrics-data-source}, {type: core-metrics-extractor}]
    data:
      sources: [{pluginRef: metrics-data-source, extractors: [{pluginRef: core-metrics-extractor}]}]
    """
    config = parse_config_text(textwrap.dedent(text))
    assert config.data_layer is not None and config.data_layer.sources[0].extractors == ("core-metrics-extractor",)
    with pytest.raises(ConfigError, match="^data: give dataLayer"):
        parse_config_text(textwrap.dedent(text) + "dataLayer: {}\n")
    llm_d = textwrap.dedent(text).replace("data:", "dataLayer:") + "  crossReplicaSyncInterval: 2s\n  crossReplicaSyncerPluginRef: metrics-data-source\n"
    layer = parse_config_text(llm_d).data_layer
    assert layer is not None and layer.cross_replica_sync_interval == 2.0 and layer.cross_replica_syncer == "metrics-data-source"
    with pytest.raises(ConfigError, match="^dataLayer.peerDiscovery.pluginRef: no plugin named 'peers'"):
        parse_config_text(llm_d + "  peerDiscovery: {pluginRef: peers}\n")


def test_max_requests_reads_as_a_quantity_as_upstream_types_it() -> None:
    config = parse_config_text("apiVersion: llm-d.ai/v1\nkind: EndpointPickerConfig\nflowControl:\n  maxRequests: '1k'\n"
                               "  priorityBands: [{priority: 1, maxRequests: '500'}]\n")
    assert config.flow_control is not None
    assert (config.flow_control.max_requests, config.flow_control.priority_bands[0].max_requests) == (1000, 500)


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
