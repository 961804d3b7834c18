"""Building schedulers from configs: the reference's defaults, plugin parameters, presets and sources."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from epp.config import ConfigError, load_config, load_scheduler, load_scheduler_text
from epp.datastore import EndpointMetrics
from epp.scheduling.plugins.pickers.max_score import MaxScorePicker
from epp.scheduling.plugins.profiles.single import SingleProfileHandler
from epp.scheduling.plugins.scorers.prefix_cache import PrefixCacheScorer
from epp.config.presets import PRESETS, build_preset
from epp.scheduling.prefix.producer import ApproxPrefixCacheProducer
from epp.scheduling.saturation import UtilizationDetector
from tests.config.test_decode import FULL, GIE_SAMPLE
from tests.conftest import make_request, make_state, make_states

HEAD = "apiVersion: llm-d.ai/v1alpha1\nkind: EndpointPickerConfig\n"


def test_gie_sample_builds_with_weights_and_two_endpoint_picker() -> None:
    scheduler = load_scheduler_text(GIE_SAMPLE, rng=random.Random(1))
    profile = scheduler.profiles["default"]
    assert [(ws.scorer.typed_name.name, ws.weight) for ws in profile.scorers] == [
        ("queue-scorer", 2.0), ("kv-cache-utilization-scorer", 2.0), ("prefix", 3.0),
    ]
    assert isinstance(profile.picker, MaxScorePicker) and profile.picker.max_num_of_endpoints == 2
    assert isinstance(scheduler.handler, SingleProfileHandler)
    # the prefix scorer created its producer, which runs as a PreRequest plugin
    assert any(isinstance(p, ApproxPrefixCacheProducer) for p in scheduler.pre_request_plugins)
    endpoints = [make_state(f"e{i}", metrics=EndpointMetrics(0.0, waiting=i)) for i in range(3)]
    result = scheduler.schedule(make_request(), endpoints)
    assert [e.name for e in result.endpoints] == ["e0", "e1"]
    assert result.profile_results["default"].scores == pytest.approx({"e0": 2 + 2, "e1": 1 + 2, "e2": 0 + 2})


def test_defaults_weight_one_and_max_score_picker() -> None:
    scheduler = load_scheduler_text(HEAD + "plugins: [{type: queue-scorer}]\nschedulingProfiles: [{name: p, plugins: [{pluginRef: queue-scorer}]}]\n")
    profile = scheduler.profiles["p"]
    assert profile.scorers[0].weight == 1.0 and isinstance(profile.picker, MaxScorePicker)


def test_plugins_without_profiles_form_a_default_profile() -> None:
    scheduler = load_scheduler_text(HEAD + "plugins: [{type: decode-filter}, {type: queue-scorer}, {type: random-picker}]\n")
    profile = scheduler.profiles["default"]
    assert [f.typed_name.type for f in profile.filters] == ["decode-filter"]
    assert profile.picker.typed_name.type == "random-picker"


def test_saturation_detector_from_flow_control_or_default() -> None:
    scheduler = load_scheduler_text(FULL)
    assert isinstance(scheduler.saturation_detector, UtilizationDetector)
    assert scheduler.saturation_detector.params.queue_depth_threshold == 8
    assert scheduler.saturation_detector.params.metrics_staleness_threshold == pytest.approx(0.5)
    assert isinstance(build_preset("least-queue").saturation_detector, UtilizationDetector)


def test_producer_declared_after_its_scorer_is_shared() -> None:
    scheduler = load_scheduler_text(
        HEAD + "plugins:\n- {type: prefix-cache-scorer}\n"
        "- {type: approx-prefix-cache-producer, parameters: {lruCapacityPerServer: 7, blockSizeTokens: 32}}\n"
        "schedulingProfiles: [{name: p, plugins: [{pluginRef: prefix-cache-scorer}]}]\n"
    )
    scorer = scheduler.profiles["p"].scorers[0].scorer
    assert isinstance(scorer, PrefixCacheScorer) and scorer.producer.params.lru_capacity_per_server == 7


BAD = [
    ("plugins: [{type: nope}]\n", "plugins[0].type", "unknown plugin type 'nope'"),
    ("plugins: [{type: max-score-picker, parameters: {maxNumOfEndpoints: 0}}]\n", "plugins[0].parameters.maxNumOfEndpoints", "at least 1"),
    ("plugins: [{type: max-score-picker, parameters: {maxEndpoints: 2}}]\n", "plugins[0].parameters.maxEndpoints", "unknown parameter"),
    ("plugins: [{type: load-aware-scorer, parameters: {threshold: '5'}}]\n", "plugins[0].parameters.threshold", "must be an integer"),
    ("plugins: [{type: utilization-detector, parameters: {metricsStalenessThreshold: soon}}]\n",
     "plugins[0].parameters.metricsStalenessThreshold", "duration"),
    ("plugins: [{type: queue-scorer, parameters: {x: 1}}]\n", "plugins[0].parameters.x", "unknown parameter"),
    ("plugins: [{type: queue-scorer}]\nschedulingProfiles: [{name: p, plugins: [{pluginRef: q}]}]\n",
     "schedulingProfiles[0].plugins[0].pluginRef", "no plugin"),
    ("plugins: [{type: metrics-data-source}]\nschedulingProfiles: [{name: p, plugins: [{pluginRef: metrics-data-source}]}]\n",
     "schedulingProfiles[0].plugins[0].pluginRef", "not a scheduling plugin"),
    ("plugins: [{type: queue-scorer}]\nschedulingProfiles: [{name: p, plugins: [{pluginRef: queue-scorer, weight: -1}]}]\n",
     "schedulingProfiles[0].plugins[0].weight", "negative"),
    ("plugins: [{type: random-picker}, {type: max-score-picker}]\n"
     "schedulingProfiles: [{name: p, plugins: [{pluginRef: random-picker}, {pluginRef: max-score-picker}]}]\n",
     "schedulingProfiles[0].plugins[1].pluginRef", "already has picker"),
    ("schedulingProfiles: [{name: a}, {name: b}]\n", "schedulingProfiles", "need a profile handler"),
    ("plugins: [{type: single-profile-handler}, {name: h2, type: single-profile-handler}]\n", "plugins", "more than one profile handler"),
    ("plugins: [{type: single-profile-handler}]\nschedulingProfiles: [{name: a}, {name: b}]\n", "schedulingProfiles", "exactly one"),
    ("plugins: [{type: queue-scorer}]\nflowControl: {saturationDetector: {pluginRef: queue-scorer}}\n",
     "flowControl.saturationDetector.pluginRef", "not a saturation detector"),
]


def test_auto_created_producer_does_not_take_a_declared_name() -> None:
    scheduler = load_scheduler_text(HEAD + "plugins: [{type: prefix-cache-scorer}, {name: approx-prefix-cache-producer, type: queue-scorer}]\n")
    names = {p.typed_name.name: p.typed_name.type for p in scheduler.plugins}
    assert names["approx-prefix-cache-producer"] == "queue-scorer"
    assert names["prefix-cache-scorer-producer"] == "approx-prefix-cache-producer"


@pytest.mark.parametrize(("body", "path", "message"), BAD, ids=[b[1] for b in BAD])
def test_invalid_configs_fail_at_build_naming_the_field(body: str, path: str, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_scheduler_text(HEAD + body)
    assert err.value.path == path
    assert message in err.value.message


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_preset_is_a_config_that_schedules(name: str) -> None:
    scheduler = load_scheduler(name, rng=random.Random(1))
    endpoints = [make_state(f"e{i}", metrics=EndpointMetrics(0.0, waiting=i)) for i in range(4)]
    assert len(scheduler.schedule(make_request(prompt=b"p" * 512), endpoints).endpoints) == 1
    assert load_config(name).plugins


def test_load_from_file_and_unknown_source(tmp_path: Path) -> None:
    path = tmp_path / "epp.yaml"
    path.write_text(GIE_SAMPLE)
    assert "default" in load_scheduler(path).profiles
    assert "default" in load_scheduler(str(path)).profiles
    with pytest.raises(ConfigError, match="neither a preset"):
        load_scheduler("no-such-preset")
    path.write_text(HEAD + "plugins: [{type: nope}]\n")
    with pytest.raises(ConfigError, match=r"plugins\[0\]\.type: .*\(in .*epp\.yaml\)"):
        load_scheduler(path)
    path.write_text(HEAD + "plugins: {}\n")
    with pytest.raises(ConfigError, match=r"^plugins: must be a list \(in .*epp\.yaml\)$"):
        load_config(path)


def test_alpha_plugin_types_need_allow_experimental() -> None:
    """Upstream's loader refuses alpha-stability plugins unless --allow-experimental-plugins is set."""
    from epp.config import ConfigError, build_scheduler, parse_config_text
    from epp.config.plugins import BUILTIN_PLUGINS
    from epp.scheduling.plugins.scorers import queue
    from epp.plugin.registry import PluginRegistry, PluginType

    registry = PluginRegistry([*BUILTIN_PLUGINS, PluginType("alpha-scorer", queue.factory, alpha=True)])
    config = parse_config_text("apiVersion: llm-d.ai/v1alpha1\nkind: EndpointPickerConfig\nplugins:\n- {name: a, type: alpha-scorer}\n")
    with pytest.raises(ConfigError, match=r"^plugins\[0\].type: plugin 'a' \(type 'alpha-scorer'\) has alpha stability; "
                                          "start epp with --allow-experimental-plugins"):
        build_scheduler(config, registry=registry, allow_experimental=False)
    assert build_scheduler(config, registry=registry, allow_experimental=True).plugins


def test_a_parser_listed_in_a_profile_is_accepted_as_upstream_does() -> None:
    """GIE's integration-test config lists openai-parser among a profile's plugins; it changes nothing there."""
    from epp.config import load_scheduler_text

    scheduler = load_scheduler_text("apiVersion: llm-d.ai/v1alpha1\nkind: EndpointPickerConfig\n"
                                    "plugins: [{type: openai-parser}, {type: queue-scorer}]\n"
                                    "schedulingProfiles: [{name: default, plugins: [{pluginRef: openai-parser}, {pluginRef: queue-scorer}]}]\n")
    assert [w.scorer.typed_name.type for w in scheduler.profiles["default"].scorers] == ["queue-scorer"]


def test_profile_handler_in_a_profile_and_its_parameters_are_ignored_with_warnings_as_upstream(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # llm-d's discovery guide: single-profile-handler given scorer/picker and listed in the profile.
    # Upstream's factory never reads the parameters and AddPlugins skips a profile handler; so does epp.
    text = (
        "apiVersion: llm-d.ai/v1alpha1\nkind: EndpointPickerConfig\n"
        "plugins:\n- {name: kv, type: kv-cache-utilization-scorer}\n- {name: rp, type: random-picker}\n"
        "- {name: single, type: single-profile-handler, parameters: {scorer: kv, picker: rp}}\n"
        "schedulingProfiles: [{name: default, plugins: [{pluginRef: single}]}]\n"
    )
    with caplog.at_level("WARNING"):
        scheduler = load_scheduler_text(text)
    assert "ignoring picker, scorer" in caplog.text and "no effect in a profile" in caplog.text
    profile = scheduler.profiles["default"]
    assert isinstance(profile.picker, MaxScorePicker) and not profile.scorers and not profile.filters
    assert len(scheduler.schedule(make_request(), make_states(2)).endpoints) == 1
