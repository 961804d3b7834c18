"""llm-d's disaggregation profile handlers (``profilehandler/disagg``, ``profilehandler/dataparallel``).

``disagg-profile-handler`` runs the decode profile first (always), then the encode profile when its
decider approves (multimodal requests), then the prefill profile when its decider approves. Decode is
the primary profile: its pick is where Envoy sends the request. As a PreRequest hook it writes the
prefill pick's ``ip:port`` into the header the routing sidecar on the decode pod reads
(``x-llm-d-prefiller-host-port`` and its alias ``x-prefiller-host-port``) and the encode picks into
``x-llm-d-encoder-hosts-ports`` / ``x-encoder-hosts-ports``, dropping any client-supplied value first.
Before the encode or prefill profile runs, the decode pick goes into the cycle state under
``peer-endpoint`` so the topology-affinity plugins can keep the two phases close.

Parameters (upstream ``disagg_profile_handler.go``): ``profiles.{decode,prefill,encode}`` (default the
stage names), ``deciders.{prefill,encode}`` (decider plugin names; a stage without a decider never
runs). The deprecated flat form (``decodeProfile``, ``prefillProfile``, ``encodeProfile``,
``prefillDeciderPluginName``, ``encodeDeciderPluginName``, ``deciderPluginName``) is accepted alone,
never mixed with the nested one, as upstream does. ``pd-profile-handler`` is the older name: flat
parameters, ``deciderPluginName`` defaulting to ``prefix-based-pd-decider``; its ``prefixPluginType`` /
``prefixPluginName`` are accepted and unused (the decider finds its prefix producer itself) and a
``primaryPort`` is refused (data-parallel rank routing is ``data-parallel-profile-handler``'s job here).

``disagg-headers-handler`` (alias ``prefill-header-handler``) is the deprecated separate PreRequest
plugin that writes the same headers (``prefillProfile``, ``encodeProfile``); configs that still list it
beside the profile handler get the headers written twice with the same value.

``data-parallel-profile-handler`` (deprecated upstream for ``single-profile-handler`` with Istio ≥ 1.28.1)
runs its one profile, writes the picked rank's ``ip:port`` into ``x-data-parallel-host-port`` for the
rank-routing sidecar, and sends the request to the same pod's ``primaryPort`` (default 8000) where that
sidecar listens: every pick's port is rewritten, fallbacks included, as llm-d-router's
``pkg/epp/framework/plugins/scheduling/profilehandler/dataparallel/dp_profile_handler.go`` does.
``primaryPort: 0`` (upstream accepts it unvalidated and would send to port 0) keeps each rank's own port.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from epp.request import LLMRequest
from epp.request.headers import DATA_PARALLEL_HEADER, ENCODER_HEADERS, PREFILL_HEADERS
from epp.plugin.typed_name import TypedName
from epp.scheduling.framework import CycleState, ProfileResult, SchedulingResult
from epp.plugin.params import ParamError, decode_params
from epp.scheduling.plugins.datalayer.topology import PEER_ENDPOINT
from epp.scheduling.plugins.profiles.deciders import PREFIX_BASED_PD_DECIDER, Decider
from epp.scheduling.plugins.profiles.single import SingleProfileHandler
from epp.scheduling.profile import SchedulerProfile
from epp.plugin.registry import PluginHandle

log = logging.getLogger(__name__)

DISAGG_PROFILE_HANDLER = "disagg-profile-handler"
PD_PROFILE_HANDLER = "pd-profile-handler"
DISAGG_HEADERS_HANDLER = "disagg-headers-handler"
PREFILL_HEADER_HANDLER = "prefill-header-handler"
DATA_PARALLEL_PROFILE_HANDLER = "data-parallel-profile-handler"
DECODE, PREFILL, ENCODE = "decode", "prefill", "encode"

DecisionObserver = Callable[[str, str], None]
"""Told (target model, decision type) once per request: ``decode-only``, ``prefill-decode``,
``encode-decode`` or ``encode-prefill-decode`` (llm-d's ``disagg_decision_total`` values)."""


def decision_type(encoded: bool, prefilled: bool) -> str:
    if encoded:
        return "encode-prefill-decode" if prefilled else "encode-decode"
    return "prefill-decode" if prefilled else "decode-only"


@dataclass(frozen=True, slots=True)
class StageNames:
    decode: str = DECODE
    prefill: str = PREFILL
    encode: str = ENCODE


@dataclass(frozen=True, slots=True)
class DisaggParams:
    profiles: dict[str, Any] | None = None
    deciders: dict[str, Any] | None = None
    decode_profile: str | None = None
    prefill_profile: str | None = None
    encode_profile: str | None = None
    prefill_decider_plugin_name: str | None = None
    encode_decider_plugin_name: str | None = None
    decider_plugin_name: str | None = None
    # pd-profile-handler only
    prefix_plugin_type: str | None = None
    prefix_plugin_name: str | None = None
    primary_port: int | None = None


@dataclass(frozen=True, slots=True)
class DeciderNames:
    prefill: str | None = None
    encode: str | None = None


def _resolve_decider(handle: PluginHandle, name: str | None, key: str) -> Decider | None:
    if name is None:
        return None
    found = handle.plugins.get(name)
    if found is None:
        raise ParamError(key, f"no plugin named {name!r}")
    if not isinstance(found, Decider):
        raise ParamError(key, f"{name!r} is not a disaggregation decider")
    return found


def set_disagg_headers(request: LLMRequest, result: SchedulingResult, prefill: str, encode: str) -> None:
    """Write the prefill and encode picks into the sidecar's headers (both spellings), after dropping any
    value the client sent: a forged header must never steer the sidecar."""
    headers = {k: v for k, v in request.headers.items() if k not in PREFILL_HEADERS and k not in ENCODER_HEADERS}
    picked = result.profile_results.get(prefill)
    if picked is not None and picked.endpoints:
        headers.update(dict.fromkeys(PREFILL_HEADERS, picked.endpoints[0].endpoint.hostport))
    encoders = result.profile_results.get(encode)
    if encoders is not None and encoders.endpoints:
        headers.update(dict.fromkeys(ENCODER_HEADERS, ",".join(e.endpoint.hostport for e in encoders.endpoints)))
    request.headers = headers


class DisaggProfileHandler:
    def __init__(self, stages: StageNames, prefill_decider: Decider | None, encode_decider: Decider | None,
                 name: str = DISAGG_PROFILE_HANDLER, plugin_type: str = DISAGG_PROFILE_HANDLER) -> None:
        self.typed_name = TypedName(plugin_type, name)
        self.stages = stages
        self.prefill_decider = prefill_decider
        self.encode_decider = encode_decider
        self._evaluated = f"disagg-evaluated/{name}"
        self.decision_observer: DecisionObserver | None = None
        """Set by telemetry: hears every request's decision."""

    def pick_profiles(
        self, cycle: CycleState, request: LLMRequest, profiles: Mapping[str, SchedulerProfile],
        results: Mapping[str, ProfileResult | None],
    ) -> dict[str, SchedulerProfile]:
        stages = self.stages
        if stages.decode not in results:
            decode_profile = profiles.get(stages.decode)
            return {} if decode_profile is None else {stages.decode: decode_profile}
        decoded = results[stages.decode]
        if decoded is None or not decoded.endpoints:
            return {}
        decode = decoded.endpoints[0]
        evaluated: set[str] = cycle.setdefault(self._evaluated, set())
        for stage, decider in ((stages.encode, self.encode_decider), (stages.prefill, self.prefill_decider)):
            if stage not in profiles or stage in results or stage in evaluated:
                continue
            evaluated.add(stage)  # decided once: a rejected stage is not asked again
            if decider is not None and decider.disaggregate(cycle, request, decode):
                cycle[PEER_ENDPOINT] = decode
                return {stage: profiles[stage]}
        if self.decision_observer is not None:
            self.decision_observer(request.target_model, decision_type(
                results.get(stages.encode) is not None, results.get(stages.prefill) is not None))
        return {}

    def process_results(
        self, cycle: CycleState, request: LLMRequest, results: dict[str, ProfileResult | None]
    ) -> SchedulingResult:
        stages = self.stages
        kept: dict[str, ProfileResult | None] = {stages.decode: results.get(stages.decode)}
        for stage in (stages.prefill, stages.encode):
            got = results.get(stage)
            if got is not None and got.endpoints and kept[stages.decode] is not None:
                kept[stage] = got
        return SchedulingResult(kept, stages.decode)

    def pre_request(self, cycle: CycleState, request: LLMRequest, result: SchedulingResult) -> None:
        set_disagg_headers(request, result, self.stages.prefill, self.stages.encode)


class DisaggHeadersHandler:
    """The deprecated stand-alone PreRequest form of the handler's header writing."""

    def __init__(self, stages: StageNames, name: str, plugin_type: str) -> None:
        self.typed_name = TypedName(plugin_type, name)
        self.stages = stages

    def pre_request(self, cycle: CycleState, request: LLMRequest, result: SchedulingResult) -> None:
        set_disagg_headers(request, result, self.stages.prefill, self.stages.encode)


class DataParallelProfileHandler(SingleProfileHandler):
    """Runs its one profile as ``single-profile-handler`` does; only the result handling differs."""

    def __init__(self, name: str = DATA_PARALLEL_PROFILE_HANDLER, primary_port: int = 8000) -> None:
        self.typed_name = TypedName(DATA_PARALLEL_PROFILE_HANDLER, name)
        self.primary_port = primary_port or None  # 0: each rank's own port

    def process_results(
        self, cycle: CycleState, request: LLMRequest, results: dict[str, ProfileResult | None]
    ) -> SchedulingResult:
        (name, result), = results.items()
        if result is not None and result.endpoints:
            request.headers = {**request.headers, DATA_PARALLEL_HEADER: result.endpoints[0].endpoint.hostport}
        return SchedulingResult(results, name, port=self.primary_port)


def _nested(params: DisaggParams) -> tuple[StageNames, DeciderNames]:
    profiles = decode_params(StageNames, params.profiles or {})
    deciders = decode_params(DeciderNames, params.deciders or {})
    return profiles, deciders


def _flat(params: DisaggParams, default_decider: str | None) -> tuple[StageNames, DeciderNames]:
    stages = StageNames(params.decode_profile or DECODE, params.prefill_profile or PREFILL,
                        params.encode_profile or ENCODE)
    prefill = params.prefill_decider_plugin_name or params.decider_plugin_name or default_decider
    return stages, DeciderNames(prefill, params.encode_decider_plugin_name)


def _build(name: str, params: Mapping[str, Any], handle: PluginHandle, plugin_type: str) -> DisaggProfileHandler:
    p = decode_params(DisaggParams, params)
    if p.primary_port is not None:
        raise ParamError("primaryPort", f"data-parallel rank routing is {DATA_PARALLEL_PROFILE_HANDLER}'s job")
    flat_keys = [k for k in ("decodeProfile", "prefillProfile", "encodeProfile", "prefillDeciderPluginName",
                             "encodeDeciderPluginName", "deciderPluginName") if k in params]
    if plugin_type == DISAGG_PROFILE_HANDLER and (p.prefix_plugin_type or p.prefix_plugin_name):
        raise ParamError("prefixPluginType", f"belongs to {PD_PROFILE_HANDLER}")
    if p.profiles is not None or p.deciders is not None:
        if flat_keys or plugin_type != DISAGG_PROFILE_HANDLER:
            raise ParamError(flat_keys[0] if flat_keys else "profiles",
                             "cannot mix the deprecated flat parameters with profiles/deciders")
        stages, deciders = _nested(p)
    else:
        if flat_keys:
            log.warning("%s: flat parameters (%s) are deprecated upstream; use profiles/deciders",
                        name, ", ".join(flat_keys))
        stages, deciders = _flat(p, PREFIX_BASED_PD_DECIDER if plugin_type == PD_PROFILE_HANDLER else None)
    prefill = _resolve_decider(handle, deciders.prefill, "deciders.prefill")
    encode = _resolve_decider(handle, deciders.encode, "deciders.encode")
    if prefill is None:
        log.info("%s: no prefill decider, prefill/decode disaggregation disabled", name)
    return DisaggProfileHandler(stages, prefill, encode, name, plugin_type)


def disagg_factory(name: str, params: Mapping[str, Any], handle: PluginHandle) -> DisaggProfileHandler:
    return _build(name, params, handle, DISAGG_PROFILE_HANDLER)


def pd_factory(name: str, params: Mapping[str, Any], handle: PluginHandle) -> DisaggProfileHandler:
    log.warning("%s: %s is deprecated upstream; use %s", name, PD_PROFILE_HANDLER, DISAGG_PROFILE_HANDLER)
    return _build(name, params, handle, PD_PROFILE_HANDLER)


@dataclass(frozen=True, slots=True)
class HeadersParams:
    prefill_profile: str = PREFILL
    encode_profile: str = ENCODE


def headers_factory_for(plugin_type: str):  # type: ignore[no-untyped-def]
    def factory(name: str, params: Mapping[str, Any], handle: PluginHandle) -> DisaggHeadersHandler:
        p = decode_params(HeadersParams, params)
        return DisaggHeadersHandler(StageNames(prefill=p.prefill_profile, encode=p.encode_profile), name, plugin_type)

    return factory


@dataclass(frozen=True, slots=True)
class DataParallelParams:
    primary_port: int = field(default=8000)

    def __post_init__(self) -> None:
        if self.primary_port != 0 and not 1 <= self.primary_port <= 65535:
            raise ParamError("primaryPort", "must be between 1 and 65535")


def data_parallel_factory(name: str, params: Mapping[str, Any], handle: PluginHandle) -> DataParallelProfileHandler:
    p = decode_params(DataParallelParams, params)
    log.warning("%s: deprecated upstream, use single-profile-handler with Istio >= 1.28.1; epp writes the picked "
                "rank into %s and sends the request to %s", name, DATA_PARALLEL_HEADER,
                f"the pod's primaryPort {p.primary_port}" if p.primary_port else "the rank's own port (primaryPort 0)")
    return DataParallelProfileHandler(name, p.primary_port)
