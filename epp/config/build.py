"""EndpointPickerConfig → a running ``Scheduler``, with the reference's defaults:

* a profile plugin that is a scorer and has no weight weighs 1;
* a profile without a picker gets a ``max-score-picker`` (one endpoint);
* a profile handler listed in a profile does nothing there (one warning): upstream's
  ``SchedulerProfile.AddPlugins`` keeps only filters, scorers and pickers and skips it silently;
* one profile and no profile handler → ``single-profile-handler``; more than one handler → error;
* no ``schedulingProfiles`` at all → one ``default`` profile with every declared filter, scorer
  (weight 1) and picker, so a plugins-only config still schedules;
* the saturation detector is ``flowControl.saturationDetector`` (a pluginRef, or a
  ``utilization-detector``'s parameters inline, as is GIE's deprecated top-level ``saturationDetector:``),
  else the first configured ``utilization-detector`` or ``concurrency-detector``, else a
  utilization detector with default parameters.

Plugin types owned by other parts of epp (data layer, flow control policies) are accepted in
``plugins`` and kept on the config for their owners; any other unknown type is an error. Every
error is a ``ConfigError`` naming the field.
"""

from __future__ import annotations

import logging
import random

from epp._util.clock import Clock, WallClock
from epp.config.decode import ConfigError
from epp.config.model import EndpointPickerConfig, PluginRef, PluginSpec
from epp.request.parsers import RequestParsers, default_parsers, is_parser
from epp.plugin.typed_name import Plugin
from epp.scheduling.framework import (
    Admitter,
    Filter,
    Picker,
    PreRequest,
    ProfileHandler,
    RequestProcessor,
    Screener,
    ResponseComplete,
    ResponseMetadata,
    Scorer,
)
from epp.plugin.params import ParamError
from epp.scheduling.plugins.admission.concurrency_detector import ConcurrencyDetector
from epp.scheduling.plugins.pickers.max_score import MaxScorePicker
from epp.scheduling.plugins.profiles.single import SingleProfileHandler
from epp.scheduling.profile import SchedulerProfile, WeightedScorer
from epp.plugin.registry import PluginHandle, PluginRegistry
from epp.config.plugins import builtin_registry
from epp.plugin.params import decode_params
from epp.scheduling.saturation import SaturationDetector, UtilizationDetector, UtilizationParams
from epp.scheduling.scheduler import Scheduler

log = logging.getLogger(__name__)

# Types configs may declare that the scheduler does not build: their owners read them from the config.
EXTERNAL_PLUGIN_TYPES: frozenset[str] = frozenset({
    # data layer (metrics poller, discovery)
    "metrics-data-source", "core-metrics-extractor", "endpoint-notification-source", "file-discovery",
    "multicluster-file-discovery",
    # flow control policies (built by epp.flowcontrol.build, which depends on this package, not the reverse)
    "global-strict-fairness-policy", "round-robin-fairness-policy", "program-aware-fairness",
    "fcfs-ordering-policy", "edf-ordering-policy", "slo-deadline-ordering-policy", "soft-reflective-ceiling-policy",
})

DEFAULT_PROFILE = "default"
TOKEN_PRODUCER_TYPES = frozenset({"token-producer", "tokenizer"})  # built before the producers that read them
REQUEST_CONTROL = (Admitter, RequestProcessor, ResponseMetadata, PreRequest, ResponseComplete, Screener)
"""Plugins that act on every request whatever the profile; upstream configs also list them in a profile,
which is accepted and changes nothing (request parsers too: GIE's own test configs list one)."""


def _build_plugins(
    config: EndpointPickerConfig, registry: PluginRegistry, handle: PluginHandle, allow_experimental: bool,
) -> None:
    indexed = list(enumerate(config.plugins))
    for i, spec in indexed:
        if spec.type not in registry and spec.type not in EXTERNAL_PLUGIN_TYPES:
            raise ConfigError(f"plugins[{i}].type", f"unknown plugin type {spec.type!r} (known: {', '.join(registry.names())})")
        if spec.type in registry and registry.get(spec.type).alpha and not allow_experimental:
            raise ConfigError(f"plugins[{i}].type", f"plugin {spec.name!r} (type {spec.type!r}) has alpha stability; "
                                                    "start epp with --allow-experimental-plugins to load it")
    # Producers first, so a consumer declared before its producer still finds it.
    ordered = sorted(
        (item for item in indexed if item[1].type in registry),
        key=lambda item: (not registry.get(item[1].type).producer, item[1].type not in TOKEN_PRODUCER_TYPES),
    )
    for i, spec in ordered:
        try:
            registry.build(spec.type, spec.name, spec.parameters, handle)
        except ParamError as err:
            path = f"plugins[{i}].parameters" + (f".{err.key}" if err.key else "")
            raise ConfigError(path, err.message) from None
        except ValueError as err:
            raise ConfigError(f"plugins[{i}]", str(err)) from None


def _profile(name: str, path: str, refs: tuple[PluginRef, ...], config: EndpointPickerConfig, handle: PluginHandle) -> SchedulerProfile:
    external = {p.name for p in config.plugins if p.type in EXTERNAL_PLUGIN_TYPES}
    filters: list[Filter] = []
    scorers: list[WeightedScorer] = []
    picker: Picker | None = None
    for k, ref in enumerate(refs):
        ref_path = f"{path}.plugins[{k}]"
        plugin = handle.plugins.get(ref.plugin_ref)
        if plugin is None:
            why = "is not a scheduling plugin" if ref.plugin_ref in external else "no plugin with that name"
            raise ConfigError(f"{ref_path}.pluginRef", f"{ref.plugin_ref!r}: {why}")
        if ref.weight is not None and ref.weight < 0:
            raise ConfigError(f"{ref_path}.weight", "must not be negative")
        if isinstance(plugin, ProfileHandler):
            log.warning("config: %s.pluginRef %r is a profile handler; it has no effect in a profile (ignored, as upstream does)",
                        ref_path, ref.plugin_ref)
            continue
        used = False
        if isinstance(plugin, Filter):
            filters.append(plugin)
            used = True
        if isinstance(plugin, Scorer):
            scorers.append(WeightedScorer(plugin, 1.0 if ref.weight is None else ref.weight))
            used = True
        if isinstance(plugin, Picker):
            if picker is not None:
                raise ConfigError(f"{ref_path}.pluginRef", f"profile {name!r} already has picker {picker.typed_name.name!r}")
            picker = plugin
            used = True
        if not used and not isinstance(plugin, REQUEST_CONTROL) and not is_parser(plugin):
            raise ConfigError(f"{ref_path}.pluginRef", f"{ref.plugin_ref!r} is not a filter, scorer or picker")
    return SchedulerProfile(name, picker or MaxScorePicker(rng=handle.child_rng()), filters, scorers)


def _implicit_profile_refs(config: EndpointPickerConfig, handle: PluginHandle) -> tuple[PluginRef, ...]:
    refs = []
    for spec in config.plugins:
        plugin = handle.plugins.get(spec.name)
        if plugin is not None and not isinstance(plugin, ProfileHandler) and isinstance(plugin, (Filter, Scorer, Picker)):
            refs.append(PluginRef(spec.name))
    return tuple(refs)


def _saturation_detector(config: EndpointPickerConfig, handle: PluginHandle) -> SaturationDetector:
    if config.saturation_detector is not None:  # inline parameters (GIE's deprecated top-level section)
        try:
            return UtilizationDetector(handle.clock, params=decode_params(UtilizationParams, config.saturation_detector))
        except ParamError as err:
            raise ConfigError(f"saturationDetector.{err.key}" if err.key else "saturationDetector", err.message) from None
    ref = config.flow_control.saturation_detector if config.flow_control else None
    if ref is not None:
        plugin: Plugin | None = handle.plugins.get(ref)
        if not isinstance(plugin, SaturationDetector):
            raise ConfigError("flowControl.saturationDetector.pluginRef", f"{ref!r} is not a saturation detector")
        return plugin
    for plugin in handle.plugins.values():
        if isinstance(plugin, (UtilizationDetector, ConcurrencyDetector)):
            return plugin
    return UtilizationDetector(handle.clock, params=UtilizationParams())


def build_scheduler(
    config: EndpointPickerConfig,
    *,
    clock: Clock | None = None,
    rng: random.Random | None = None,
    registry: PluginRegistry | None = None,
    allow_experimental: bool = True,
) -> Scheduler:
    """Instantiate ``config``'s plugins and profiles. ``clock`` should be the datastore's clock and
    ``rng`` a seeded generator when runs must be reproducible (replay, tests). ``allow_experimental``
    False refuses alpha plugin types (``epp serve`` without ``--allow-experimental-plugins``)."""
    handle = PluginHandle(clock or WallClock(), rng or random.Random(), reserved=frozenset(p.name for p in config.plugins))
    _build_plugins(config, registry or builtin_registry(), handle, allow_experimental)
    if config.scheduling_profiles:
        profiles = {
            p.name: _profile(p.name, f"schedulingProfiles[{j}]", p.plugins, config, handle)
            for j, p in enumerate(config.scheduling_profiles)
        }
    else:
        profiles = {DEFAULT_PROFILE: _profile(DEFAULT_PROFILE, "plugins", _implicit_profile_refs(config, handle), config, handle)}
    handlers = [p for p in handle.plugins.values() if isinstance(p, ProfileHandler)]
    if len(handlers) > 1:
        raise ConfigError("plugins", f"more than one profile handler: {', '.join(h.typed_name.name for h in handlers)}")
    if handlers:
        handler = handlers[0]
    elif len(profiles) == 1:
        handler = SingleProfileHandler()
    else:
        raise ConfigError("schedulingProfiles", f"{len(profiles)} profiles need a profile handler plugin")
    if isinstance(handler, SingleProfileHandler) and len(profiles) != 1:
        raise ConfigError("schedulingProfiles", f"{handler.typed_name.type} needs exactly one profile, got {len(profiles)}")
    return Scheduler(
        profiles, handler, plugins=list(handle.plugins.values()),
        saturation_detector=_saturation_detector(config, handle), data_needs=handle.needs,
    )


def request_parsers(config: EndpointPickerConfig, scheduler: Scheduler) -> RequestParsers:
    """``requestHandler.parsers`` resolved to the built parser plugins, in order; the reference's
    default list (openai, anthropic, vllmhttp) when the config names none."""
    refs = config.request_handler.parsers if config.request_handler is not None else ()
    if not refs:
        return default_parsers()
    built = {p.typed_name.name: p for p in scheduler.plugins}
    parsers = []
    for i, ref in enumerate(refs):
        plugin = built.get(ref)
        if not is_parser(plugin):
            raise ConfigError(f"requestHandler.parsers[{i}].pluginRef", f"{ref!r} is not a request parser")
        parsers.append(plugin)
    return RequestParsers(parsers)  # type: ignore[arg-type]  # is_parser checked each


def plugin_specs(config: EndpointPickerConfig, plugin_type: str) -> list[PluginSpec]:
    """The declared plugins of one type, e.g. the data layer's ``metrics-data-source`` entries."""
    return [p for p in config.plugins if p.type == plugin_type]
