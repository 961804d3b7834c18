"""Strict decoding of EndpointPickerConfig YAML: every unknown field, wrong type, duplicate key or
dangling reference is a ``ConfigError`` naming its path (``schedulingProfiles[0].plugins[2].weight``),
so a bad config fails at start with a message that points at the line to fix."""

from __future__ import annotations

import dataclasses
import logging
import re
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

import yaml

from epp.config.model import (
    API_VERSIONS,
    DEPRECATED_API_VERSIONS,
    KIND,
    DataLayerSpec,
    DataSourceSpec,
    EndpointPickerConfig,
    FlowControlSpec,
    PluginRef,
    PluginSpec,
    PriorityBandSpec,
    RequestHandlerSpec,
    SchedulingProfileSpec,
)
from epp.plugin.params import parse_duration

T = TypeVar("T")

log = logging.getLogger("epp.config")

_QUANTITY = re.compile(r"^(\d+)(Ki|Mi|Gi|Ti|K|M|G|T|k)?$")
_QUANTITY_FACTOR = {None: 1, "k": 10**3, "K": 10**3, "M": 10**6, "G": 10**9, "T": 10**12,
                    "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}
# GIE's SaturationDetector config (v1.x): the utilization detector's parameters.
_UTILIZATION_KEYS = {"queueDepthThreshold", "kvCacheUtilThreshold", "metricsStalenessThreshold", "headroom"}
_GATE = re.compile(r"^([A-Za-z][A-Za-z0-9_.-]*)(?:=(true|false))?$")


class ConfigError(ValueError):
    """An invalid config; ``path`` locates the field (empty for the document itself)."""

    def __init__(self, path: str, message: str) -> None:
        super().__init__(f"{path}: {message}" if path else message)
        self.path = path
        self.message = message


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that rejects duplicate mapping keys instead of keeping the last one."""


def _construct_mapping(loader: _StrictLoader, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
    seen: set[Any] = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise ConfigError("", f"duplicate key {key!r} (line {key_node.start_mark.line + 1})")
        seen.add(key)
    mapping: dict[Any, Any] = loader.construct_mapping(node, deep=deep)
    return mapping


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def _at(path: str, key: str | int) -> str:
    if isinstance(key, int):
        return f"{path}[{key}]"
    return f"{path}.{key}" if path else key


def _mapping(value: object, path: str, allowed: set[str]) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise ConfigError(path, "must be a mapping")
    for key in value:
        if key not in allowed:
            raise ConfigError(_at(path, str(key)), f"unknown field (known: {', '.join(sorted(allowed))})")
    return value


def _list(value: object, path: str) -> list[Any]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise ConfigError(path, "must be a list")
    return value


def _str(value: object, path: str) -> str:
    if not isinstance(value, str) or not value:
        raise ConfigError(path, "must be a non-empty string")
    return value


def _opt(obj: Mapping[str, Any], key: str, path: str, convert: Callable[[object, str], T]) -> T | None:
    value = obj.get(key)
    return None if value is None else convert(value, _at(path, key))


def _number(value: object, path: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(path, "must be a number")
    return float(value)


def _int(value: object, path: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(path, "must be an integer")
    return value


def _count(value: object, path: str) -> int:
    n = _int(value, path)
    if n < 0:
        raise ConfigError(path, "must not be negative")
    return n


def _bool(value: object, path: str) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(path, "must be true or false")
    return value


def parse_quantity(text: str, path: str = "") -> int:
    """A whole Kubernetes quantity such as ``1Gi``, ``500M`` or ``1024`` → an integer."""
    m = _QUANTITY.match(text.strip())
    if m is None:
        raise ConfigError(path, f"must be a byte count such as 1073741824 or 1Gi, got {text!r}")
    return int(m.group(1)) * _QUANTITY_FACTOR[m.group(2)]


def _bytes(value: object, path: str) -> int:
    """A byte or request count: an integer or a Kubernetes quantity such as ``1Gi`` or ``1k`` (upstream
    types ``maxBytes`` and ``maxRequests`` as resource.Quantity)."""
    if isinstance(value, str):
        return parse_quantity(value, path)
    return _count(value, path)


def _duration(value: object, path: str) -> float:
    try:
        return parse_duration(value)
    except ValueError as err:
        raise ConfigError(path, str(err)) from None


def _ref(value: object, path: str) -> str:
    return _str(_mapping(value, path, {"pluginRef"}).get("pluginRef"), _at(path, "pluginRef"))


def _plugin(value: object, path: str) -> PluginSpec:
    obj = _mapping(value, path, {"name", "type", "parameters"})
    plugin_type = _str(obj.get("type"), _at(path, "type"))
    name = _opt(obj, "name", path, _str) or plugin_type
    params = obj.get("parameters")
    if params is not None and not isinstance(params, Mapping):
        raise ConfigError(_at(path, "parameters"), "must be a mapping")
    return PluginSpec(name, plugin_type, dict(params or {}))


def _profile(value: object, path: str) -> SchedulingProfileSpec:
    obj = _mapping(value, path, {"name", "plugins"})
    refs = []
    for j, item in enumerate(_list(obj.get("plugins"), _at(path, "plugins"))):
        ref_path = _at(_at(path, "plugins"), j)
        ref = _mapping(item, ref_path, {"pluginRef", "weight"})
        refs.append(PluginRef(_str(ref.get("pluginRef"), _at(ref_path, "pluginRef")), _opt(ref, "weight", ref_path, _number)))
    return SchedulingProfileSpec(_str(obj.get("name"), _at(path, "name")), tuple(refs))


def _gates(value: object, path: str) -> dict[str, bool]:
    gates: dict[str, bool] = {}
    for i, item in enumerate(_list(value, path)):
        m = _GATE.match(item) if isinstance(item, str) else None
        if m is None:
            raise ConfigError(_at(path, i), "must be a gate name or name=true|false")
        gates[m.group(1)] = m.group(2) != "false"
    return gates


def _data_layer(value: object, path: str) -> DataLayerSpec:
    obj = _mapping(value, path, {
        "sources", "discovery", "injectDefaults", "peerDiscovery", "crossReplicaSyncerPluginRef", "crossReplicaSyncInterval",
    })
    sources = []
    for i, item in enumerate(_list(obj.get("sources"), _at(path, "sources"))):
        src_path = _at(_at(path, "sources"), i)
        src = _mapping(item, src_path, {"pluginRef", "extractors"})
        extractors = tuple(
            _ref(e, _at(_at(src_path, "extractors"), j)) for j, e in enumerate(_list(src.get("extractors"), _at(src_path, "extractors")))
        )
        sources.append(DataSourceSpec(_str(src.get("pluginRef"), _at(src_path, "pluginRef")), extractors))
    inject = _opt(obj, "injectDefaults", path, _bool)
    return DataLayerSpec(
        tuple(sources), _opt(obj, "discovery", path, _ref), True if inject is None else inject,
        _opt(obj, "peerDiscovery", path, _ref), _opt(obj, "crossReplicaSyncerPluginRef", path, _str),
        _opt(obj, "crossReplicaSyncInterval", path, _duration),
    )


def _band(value: object, path: str) -> PriorityBandSpec:
    obj = _mapping(value, path, {"priority", "maxBytes", "maxRequests", "fairnessPolicyRef", "orderingPolicyRef"})
    return PriorityBandSpec(
        _opt(obj, "priority", path, _int), _opt(obj, "maxBytes", path, _bytes), _opt(obj, "maxRequests", path, _bytes),
        _opt(obj, "fairnessPolicyRef", path, _str), _opt(obj, "orderingPolicyRef", path, _str),
    )


def _detector(value: object, path: str) -> tuple[str | None, dict[str, Any] | None]:
    """``saturationDetector``: ``{pluginRef: name}``, or the default utilization detector's parameters inline."""
    if not isinstance(value, Mapping):
        raise ConfigError(path, "must be a mapping")
    if "pluginRef" in value:
        return _ref(value, path), None
    return None, dict(value)


def _flow_control(value: object, path: str) -> FlowControlSpec:
    obj = _mapping(value, path, {
        "maxBytes", "maxRequests", "defaultRequestTTL", "noEndpointRequestTTL", "defaultPriorityBand",
        "defaultNegativePriorityBand", "priorityBands", "usageLimitPolicyPluginRef", "saturationDetector",
        "enableEviction",
    })
    bands = tuple(_band(b, _at(_at(path, "priorityBands"), i)) for i, b in enumerate(_list(obj.get("priorityBands"), _at(path, "priorityBands"))))
    for i, band in enumerate(bands):
        if band.priority is None:
            raise ConfigError(_at(_at(_at(path, "priorityBands"), i), "priority"), "is required")
    detector = _opt(obj, "saturationDetector", path, _detector)
    return FlowControlSpec(
        _opt(obj, "maxBytes", path, _bytes), _opt(obj, "maxRequests", path, _bytes),
        _opt(obj, "defaultRequestTTL", path, _duration), _opt(obj, "noEndpointRequestTTL", path, _duration),
        _opt(obj, "defaultPriorityBand", path, _band), _opt(obj, "defaultNegativePriorityBand", path, _band),
        bands, _opt(obj, "usageLimitPolicyPluginRef", path, _str), detector[0] if detector else None,
        bool(_opt(obj, "enableEviction", path, _bool)),
    )


def _request_handler(value: object, path: str) -> RequestHandlerSpec:
    """``parsers: [{pluginRef}]``; the single ``parser: {pluginRef}`` form is accepted too and comes
    after the list (upstream's types had both at different times)."""
    obj = _mapping(value, path, {"parsers", "parser"})
    parsers = [_ref(p, _at(_at(path, "parsers"), i)) for i, p in enumerate(_list(obj.get("parsers"), _at(path, "parsers")))]
    single = _opt(obj, "parser", path, _ref)
    return RequestHandlerSpec(tuple(parsers) + ((single,) if single and single not in parsers else ()))


def _deprecated_sections(
    obj: Mapping[str, Any], flow_control: FlowControlSpec | None, request_handler: RequestHandlerSpec | None,
) -> tuple[FlowControlSpec | None, RequestHandlerSpec | None, dict[str, Any] | None]:
    """Upstream's deprecated top-level fields, moved where upstream's loader moves them (the new field
    wins when both are set), each with one warning, plus the detector parameters given inline:

    * ``parser: {pluginRef}`` → ``requestHandler.parsers`` (llm-d-router configloader.go);
    * ``saturationDetector: {pluginRef}`` → ``flowControl.saturationDetector`` (same);
    * GIE v1.x's ``saturationDetector: {queueDepthThreshold, kvCacheUtilThreshold,
      metricsStalenessThreshold}``, or ``flowControl.saturationDetector`` without a ``pluginRef`` →
      the default ``utilization-detector``'s parameters (returned third).
    """
    inline: dict[str, Any] | None = None
    parser = _opt(obj, "parser", "", _ref)
    if parser is not None:
        log.warning("config: top-level 'parser' is deprecated; use requestHandler.parsers (the new field wins if both are set)")
        if request_handler is None or not request_handler.parsers:
            request_handler = RequestHandlerSpec((parser,))
    detector = obj.get("saturationDetector")
    if detector is not None:
        detector = _mapping(detector, "saturationDetector", _UTILIZATION_KEYS | {"pluginRef"})
        log.warning("config: top-level 'saturationDetector' is deprecated; use flowControl.saturationDetector "
                    "(the new field wins if both are set)")
        ref = _opt(detector, "pluginRef", "saturationDetector", _str)
        if ref is not None:
            if len(detector) > 1:
                raise ConfigError("saturationDetector", "give either pluginRef or thresholds, not both")
            if flow_control is None:
                flow_control = FlowControlSpec(saturation_detector=ref)
            elif flow_control.saturation_detector is None:
                flow_control = dataclasses.replace(flow_control, saturation_detector=ref)
        else:
            inline = dict(detector)
    nested = obj.get("flowControl")
    if isinstance(nested, Mapping) and nested.get("saturationDetector") is not None:
        _, params = _detector(nested["saturationDetector"], "flowControl.saturationDetector")
        if params is not None:
            if inline is not None:
                raise ConfigError("flowControl.saturationDetector", "give the detector once, here or at the top level")
            inline = params
    return flow_control, request_handler, inline


def _check_refs(config: EndpointPickerConfig) -> None:
    """Every pluginRef outside the scheduling profiles names a declared plugin (profiles are checked
    when the scheduler is built, where the plugin's kind matters too)."""
    names = {p.name for p in config.plugins}
    refs: list[tuple[str, str | None]] = []
    if config.data_layer is not None:
        for i, src in enumerate(config.data_layer.sources):
            refs.append((f"dataLayer.sources[{i}].pluginRef", src.plugin_ref))
            refs.extend((f"dataLayer.sources[{i}].extractors[{j}].pluginRef", e) for j, e in enumerate(src.extractors))
        refs.append(("dataLayer.discovery.pluginRef", config.data_layer.discovery))
    if config.flow_control is not None:
        fc = config.flow_control
        refs.append(("flowControl.usageLimitPolicyPluginRef", fc.usage_limit_policy_plugin_ref))
        refs.append(("flowControl.saturationDetector.pluginRef", fc.saturation_detector))
        for label, band in (("defaultPriorityBand", fc.default_priority_band), ("defaultNegativePriorityBand", fc.default_negative_priority_band)):
            if band is not None:
                refs.append((f"flowControl.{label}.fairnessPolicyRef", band.fairness_policy_ref))
                refs.append((f"flowControl.{label}.orderingPolicyRef", band.ordering_policy_ref))
        for i, band in enumerate(fc.priority_bands):
            refs.append((f"flowControl.priorityBands[{i}].fairnessPolicyRef", band.fairness_policy_ref))
            refs.append((f"flowControl.priorityBands[{i}].orderingPolicyRef", band.ordering_policy_ref))
    if config.data_layer is not None:
        refs.append(("dataLayer.peerDiscovery.pluginRef", config.data_layer.peer_discovery))
        refs.append(("dataLayer.crossReplicaSyncerPluginRef", config.data_layer.cross_replica_syncer))
    if config.request_handler is not None:
        refs.extend((f"requestHandler.parsers[{i}].pluginRef", p) for i, p in enumerate(config.request_handler.parsers))
    for path, ref in refs:
        if ref is not None and ref not in names:
            raise ConfigError(path, f"no plugin named {ref!r}")


def decode_config(document: object) -> EndpointPickerConfig:
    """A parsed YAML document → ``EndpointPickerConfig``, or ``ConfigError``."""
    obj = _mapping(document, "", {
        "apiVersion", "kind", "featureGates", "plugins", "schedulingProfiles", "dataLayer", "flowControl",
        "requestHandler",
        # deprecated / GIE v1.x spellings, moved into the sections above
        "data", "parser", "saturationDetector",
    })
    api_version = _str(obj.get("apiVersion"), "apiVersion")
    if api_version not in API_VERSIONS:
        raise ConfigError("apiVersion", f"must be one of {', '.join(API_VERSIONS)}, got {api_version!r}")
    if api_version in DEPRECATED_API_VERSIONS:
        log.warning("config: apiVersion %s is deprecated; use llm-d.ai/v1alpha1", api_version)
    if "data" in obj and "dataLayer" in obj:
        raise ConfigError("data", "give dataLayer or GIE's older name data, not both")
    data_layer_key = "data" if "data" in obj else "dataLayer"
    kind = _str(obj.get("kind"), "kind")
    if kind != KIND:
        raise ConfigError("kind", f"must be {KIND}, got {kind!r}")
    plugins = tuple(_plugin(p, _at("plugins", i)) for i, p in enumerate(_list(obj.get("plugins"), "plugins")))
    seen: set[str] = set()
    for i, p in enumerate(plugins):
        if p.name in seen:
            raise ConfigError(_at(_at("plugins", i), "name"), f"duplicate plugin name {p.name!r}")
        seen.add(p.name)
    profiles = tuple(_profile(p, _at("schedulingProfiles", i)) for i, p in enumerate(_list(obj.get("schedulingProfiles"), "schedulingProfiles")))
    profile_names: set[str] = set()
    for i, profile in enumerate(profiles):
        if profile.name in profile_names:
            raise ConfigError(_at(_at("schedulingProfiles", i), "name"), f"duplicate profile name {profile.name!r}")
        profile_names.add(profile.name)
    flow_control, request_handler, inline = _deprecated_sections(
        obj, _opt(obj, "flowControl", "", _flow_control), _opt(obj, "requestHandler", "", _request_handler),
    )
    config = EndpointPickerConfig(
        api_version, kind, _gates(obj.get("featureGates"), "featureGates"), plugins, profiles,
        _opt(obj, data_layer_key, "", _data_layer), flow_control, request_handler, inline,
    )
    _check_refs(config)
    return config


def parse_config_text(text: str) -> EndpointPickerConfig:
    """YAML text → ``EndpointPickerConfig`` (``ConfigError`` on bad YAML too)."""
    try:
        document = yaml.load(text, Loader=_StrictLoader)  # a SafeLoader subclass: no arbitrary objects
    except yaml.YAMLError as err:
        raise ConfigError("", f"invalid YAML: {err}") from None
    return decode_config(document)
