"""EndpointPickerConfig as frozen values, field for field with the reference's YAML (names in
snake_case; durations in seconds; byte sizes in bytes)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

API_VERSIONS = (
    "llm-d.ai/v1alpha1", "llm-d.ai/v1", "inference.networking.x-k8s.io/v1alpha1",
    # GIE's first config group (before v1.0); its docs still show it, so accept it with a warning.
    "config.apix.gateway-api-inference-extension.sigs.k8s.io/v1alpha1",
)
DEPRECATED_API_VERSIONS = frozenset(API_VERSIONS[2:])
KIND = "EndpointPickerConfig"


@dataclass(frozen=True, slots=True)
class PluginSpec:
    """``plugins[i]``: ``name`` defaults to ``type``; ``parameters`` stay raw until the plugin's
    factory decodes them against its typed parameters."""

    name: str
    type: str
    parameters: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class PluginRef:
    """``schedulingProfiles[i].plugins[j]``: weight None means "not given" (a scorer then weighs 1)."""

    plugin_ref: str
    weight: float | None = None


@dataclass(frozen=True, slots=True)
class SchedulingProfileSpec:
    name: str
    plugins: tuple[PluginRef, ...] = ()


@dataclass(frozen=True, slots=True)
class DataSourceSpec:
    plugin_ref: str
    extractors: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class DataLayerSpec:
    sources: tuple[DataSourceSpec, ...] = ()
    discovery: str | None = None
    inject_defaults: bool = True
    # llm-d's multi-replica fields: decoded and reference-checked; no epp part reads them yet.
    peer_discovery: str | None = None
    cross_replica_syncer: str | None = None
    cross_replica_sync_interval: float | None = None


@dataclass(frozen=True, slots=True)
class PriorityBandSpec:
    priority: int | None = None
    max_bytes: int | None = None
    max_requests: int | None = None
    fairness_policy_ref: str | None = None
    ordering_policy_ref: str | None = None


@dataclass(frozen=True, slots=True)
class FlowControlSpec:
    max_bytes: int | None = None
    max_requests: int | None = None
    default_request_ttl: float | None = None
    no_endpoint_request_ttl: float | None = None
    default_priority_band: PriorityBandSpec | None = None
    default_negative_priority_band: PriorityBandSpec | None = None
    priority_bands: tuple[PriorityBandSpec, ...] = ()
    usage_limit_policy_plugin_ref: str | None = None
    saturation_detector: str | None = None
    """``saturationDetector.pluginRef``; inline detector parameters land in the config's ``saturation_detector``."""
    enable_eviction: bool = False


@dataclass(frozen=True, slots=True)
class RequestHandlerSpec:
    parsers: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class EndpointPickerConfig:
    api_version: str = API_VERSIONS[0]
    kind: str = KIND
    feature_gates: Mapping[str, bool] = field(default_factory=dict)
    plugins: tuple[PluginSpec, ...] = ()
    scheduling_profiles: tuple[SchedulingProfileSpec, ...] = ()
    data_layer: DataLayerSpec | None = None
    flow_control: FlowControlSpec | None = None
    request_handler: RequestHandlerSpec | None = None
    saturation_detector: Mapping[str, Any] | None = None
    """Parameters of the default ``utilization-detector`` given inline: GIE's deprecated top-level
    ``saturationDetector:`` section, or ``flowControl.saturationDetector`` without a ``pluginRef``."""

    def gate(self, name: str, default: bool = False) -> bool:
        """A feature gate's value (``flowControl`` is off unless enabled)."""
        return self.feature_gates.get(name, default)

    def source_extractors(self) -> dict[str, tuple[str, ...]]:
        """``dataLayer.sources``: each listed source plugin's name → the extractor names it feeds."""
        return {s.plugin_ref: s.extractors for s in (self.data_layer.sources if self.data_layer else ())}
