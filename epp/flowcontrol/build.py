"""``flowControl:`` (with ``featureGates: [flowControl]``) → the director's admission policy.

Without the gate, or without the section, admission is GIE's: shed sheddable requests while the
scheduler's saturation detector says the pool is saturated (``ShedSheddable``), as llm-d does without
flow control. With both, a ``FlowController`` over the same detector. Defaults are llm-d-router's
(``pkg/epp/flowcontrol/registry/config.go``, ``controller/config.go``): ordering ``fcfs``, fairness
``global-strict``, static usage limit, 1 GB and no request limit per band, TTL 60 s in both regimes,
no global limits; priority 0 always has a band.
"""

from __future__ import annotations

from collections.abc import Callable

from epp._util.clock import Clock
from epp.config.decode import ConfigError
from epp.config.model import EndpointPickerConfig, PriorityBandSpec
from epp.datastore import EndpointState
from epp.director import AdmissionPolicy, ShedSheddable
from epp.flowcontrol.controller import (
    DEFAULT_BAND_MAX_BYTES,
    DEFAULT_NO_ENDPOINT_REQUEST_TTL,
    DEFAULT_REQUEST_TTL,
    BandSpec,
    FlowControlSettings,
    FlowController,
    FlowRecorder,
)
from epp.flowcontrol.policies import (
    FACTORIES,
    FCFS,
    GLOBAL_STRICT,
    FairnessPolicy,
    FlowPolicy,
    GlobalStrict,
    OrderingPolicy,
    ProgramAware,
    RoundRobin,
    SoftReflectiveCeiling,
    StaticUsageLimit,
)
from epp.plugin.params import ParamError
from epp.scheduling.scheduler import Scheduler

FLOW_CONTROL_GATE = "flowControl"


def _policies(config: EndpointPickerConfig) -> dict[str, FlowPolicy]:
    built: dict[str, FlowPolicy] = {}
    for i, spec in enumerate(config.plugins):
        factory = FACTORIES.get(spec.type)
        if factory is None:
            continue
        try:
            built[spec.name] = factory(spec.name, spec.parameters)
        except ParamError as err:
            raise ConfigError(f"plugins[{i}].parameters" + (f".{err.key}" if err.key else ""), err.message) from None
    return built


def _ref(policies: dict[str, FlowPolicy], ref: str | None, kind: type | tuple[type, ...], what: str, path: str) -> FlowPolicy | None:
    if ref is None:
        return None
    policy = policies.get(ref)
    if policy is None or not isinstance(policy, kind):
        raise ConfigError(path, f"{ref!r} is not a {what}")
    return policy


def _band(band: PriorityBandSpec | None, path: str, policies: dict[str, FlowPolicy], fairness: FairnessPolicy,
          ordering: OrderingPolicy, base: BandSpec | None = None) -> BandSpec:
    if band is None:
        return base or BandSpec(DEFAULT_BAND_MAX_BYTES, 0, fairness, ordering)
    fair = _ref(policies, band.fairness_policy_ref, _FAIRNESS, "fairness policy", f"{path}.fairnessPolicyRef")
    order = _ref(policies, band.ordering_policy_ref, OrderingPolicy, "ordering policy", f"{path}.orderingPolicyRef")
    return BandSpec(
        band.max_bytes or DEFAULT_BAND_MAX_BYTES,
        band.max_requests or 0,
        fair if fair is not None else fairness,  # type: ignore[arg-type]
        order if order is not None else ordering,  # type: ignore[arg-type]
    )


_FAIRNESS = (GlobalStrict, RoundRobin, ProgramAware)
_USAGE_LIMITS = (SoftReflectiveCeiling, StaticUsageLimit)


def flow_control_settings(config: EndpointPickerConfig) -> FlowControlSettings | None:
    """The flow controller's settings, or None when flow control is off; ``ConfigError`` names the field."""
    fc = config.flow_control
    if fc is None or not config.gate(FLOW_CONTROL_GATE):
        return None
    policies = _policies(config)
    fairness = GlobalStrict(GLOBAL_STRICT)
    ordering = FACTORIES[FCFS](FCFS, {})
    assert isinstance(ordering, OrderingPolicy)
    default = _band(fc.default_priority_band, "flowControl.defaultPriorityBand", policies, fairness, ordering)
    negative = None
    if fc.default_negative_priority_band is not None:
        negative = _band(fc.default_negative_priority_band, "flowControl.defaultNegativePriorityBand", policies,
                         default.fairness, default.ordering)
    bands: dict[int, BandSpec] = {}
    for i, band in enumerate(fc.priority_bands):
        path = f"flowControl.priorityBands[{i}]"
        assert band.priority is not None  # the decoder requires it
        if band.priority in bands:
            raise ConfigError(f"{path}.priority", f"duplicate priority level {band.priority}")
        bands[band.priority] = _band(band, path, policies, default.fairness, default.ordering)
    usage = _ref(policies, fc.usage_limit_policy_plugin_ref, _USAGE_LIMITS, "usage limit policy",
                 "flowControl.usageLimitPolicyPluginRef")
    return FlowControlSettings(
        bands, default, negative, usage if usage is not None else StaticUsageLimit(),  # type: ignore[arg-type]
        max_bytes=fc.max_bytes or 0, max_requests=fc.max_requests or 0,
        default_request_ttl=DEFAULT_REQUEST_TTL if fc.default_request_ttl is None else fc.default_request_ttl,
        no_endpoint_request_ttl=(DEFAULT_NO_ENDPOINT_REQUEST_TTL if fc.no_endpoint_request_ttl is None
                                 else fc.no_endpoint_request_ttl),
    )


def build_admission(config: EndpointPickerConfig, scheduler: Scheduler, pool: Callable[[], list[EndpointState]],
                    clock: Clock, recorder: FlowRecorder | None = None) -> AdmissionPolicy:
    """The admission policy ``config`` asks for, over the scheduler's saturation detector."""
    settings = flow_control_settings(config)
    if settings is None:
        return ShedSheddable(scheduler.saturation_detector)
    if scheduler.saturation_detector is None:
        raise ConfigError("flowControl.saturationDetector", "flow control needs a saturation detector")
    return FlowController(settings, scheduler.saturation_detector, pool, clock, recorder)

