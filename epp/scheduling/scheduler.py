"""The scheduler loop: ask the profile handler which profiles to run until it says stop."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from time import perf_counter_ns
from typing import TYPE_CHECKING, Any, TypeVar

from epp.contracts.datalayer import DataNeeds
from epp.datastore import Datastore, EndpointState
from epp.request import LLMRequest, RequestError
from epp.plugin.typed_name import Plugin
from epp.scheduling.framework import (
    PRE_REQUEST,
    PROCESS_PROFILES_RESULTS,
    PROFILE_PICKER,
    RESPONSE_COMPLETE,
    RESPONSE_RECEIVED,
    RESPONSE_STREAMING,
    Admitter,
    CycleState,
    DurationRecorder,
    MembershipListener,
    MetricsExporter,
    PluginTimer,
    PreRequest,
    ProfileHandler,
    ProfileResult,
    RequestProcessor,
    ResponseComplete,
    ResponseFailed,
    ResponseHeaders,
    ResponseMetadata,
    ResponseReceived,
    ResponseStarted,
    Screener,
    SchedulingResult,
)
from epp.scheduling.profile import SchedulerProfile

if TYPE_CHECKING:
    from epp.scheduling.saturation import SaturationDetector

log = logging.getLogger(__name__)
P = TypeVar("P", bound=Plugin)


class Scheduler:
    """Turns (request, candidate endpoints) into a ``SchedulingResult``.

    Raises ``RequestError`` 503 for no candidates and 429 (``rejected-saturated``) when every profile's
    filters left nothing, as the reference does.

    ``plugins`` is every plugin the config built (also those outside profiles, such as producers):
    the ones implementing PreRequest / ResponseHeaders / ResponseStarted / ResponseComplete are called
    at those points in declaration order, and ``attach`` subscribes the ones that track endpoints to a datastore.
    ``saturation_detector`` is what admission asks before shedding sheddable (priority < 0) requests.

    A hook that raises never fails the request or the stream: the error is logged (with traceback the
    first time per plugin and hook, then at debug level so a broken plugin cannot flood the log) and the
    remaining hooks still run.

    ``instrument(timer)`` has every plugin call at every extension point timed and reported to
    ``timer`` (telemetry's ``plugin_duration_seconds``); uninstrumented, nothing is recorded.
    """

    def __init__(
        self,
        profiles: Mapping[str, SchedulerProfile],
        handler: ProfileHandler,
        pre_request: Sequence[PreRequest] = (),
        response_complete: Sequence[ResponseComplete] = (),
        *,
        plugins: Sequence[Plugin] = (),
        saturation_detector: SaturationDetector | None = None,
        data_needs: DataNeeds | None = None,
    ) -> None:
        if not profiles:
            raise ValueError("a scheduler needs at least one profile")
        self.profiles = dict(profiles)
        self.handler = handler
        self.plugins = list(plugins)
        self.pre_request_plugins = _merge(pre_request, [p for p in self.plugins if isinstance(p, PreRequest)])
        self.response_complete_plugins = _merge(
            response_complete, [p for p in self.plugins if isinstance(p, ResponseComplete)]
        )
        self.response_header_plugins = [p for p in self.plugins if isinstance(p, ResponseHeaders)]
        self.response_received_plugins = [p for p in self.plugins if isinstance(p, ResponseReceived)]
        self.response_started_plugins = [p for p in self.plugins if isinstance(p, ResponseStarted)]
        self.saturation_detector = saturation_detector
        self.admitters = [p for p in self.plugins if isinstance(p, Admitter)]
        self.screeners = [p for p in self.plugins if isinstance(p, Screener)]
        self.request_processors = [p for p in self.plugins if isinstance(p, RequestProcessor)]
        self.response_metadata_plugins = [p for p in self.plugins if isinstance(p, ResponseMetadata)]
        self.membership_listeners = [p for p in self.plugins if isinstance(p, MembershipListener)]
        self.metrics_exporters = [p for p in self.plugins if isinstance(p, MetricsExporter)]
        self.data_needs = data_needs if data_needs is not None else DataNeeds()
        """The feeds the plugins asked the data layer for (``epp.datalayer.DataLayer`` opens them)."""
        self._hook_failures: set[tuple[int, str]] = set()
        self._timers: dict[str, list[DurationRecorder]] | None = None

    def instrument(self, timer: PluginTimer | None) -> None:
        """Report every plugin call's duration to ``timer`` (None stops reporting). Call it once the
        scheduler is built: recorders are resolved here, per extension point and plugin."""
        for profile in self.profiles.values():
            profile.instrument(timer)
        if timer is None:
            self._timers = None
            return
        hooks = {
            PROFILE_PICKER: [self.handler], PROCESS_PROFILES_RESULTS: [self.handler],
            PRE_REQUEST: self.pre_request_plugins,
            RESPONSE_RECEIVED: [*self.response_header_plugins, *self.response_received_plugins],
            RESPONSE_STREAMING: self.response_started_plugins,
            RESPONSE_COMPLETE: [*self.response_complete_plugins, *self.response_metadata_plugins],
        }
        self._timers = {point: [timer.recorder(point, p) for p in plugins] for point, plugins in hooks.items()}

    def attach(self, datastore: Datastore) -> None:
        """Subscribe plugins that keep per-endpoint state (prefix index, LRUs, trees) to membership
        changes, so removed endpoints are purged."""
        for plugin in self.membership_listeners:
            datastore.add_listener(plugin)

    def schedule(
        self, request: LLMRequest, candidates: list[EndpointState], cycle: CycleState | None = None
    ) -> SchedulingResult:
        if not candidates:
            raise RequestError(
                503, "no endpoints available to serve the request", error_type="service_unavailable",
                code="no_endpoints", reason="rejected-no-endpoints",
            )
        for screener in self.screeners:
            candidates = screener.screen(request, candidates)
            if not candidates:
                raise RequestError(
                    503, f"no endpoint left after screener {screener.typed_name.name!r}", error_type="service_unavailable",
                    code="no_endpoints", reason="rejected-no-endpoints",
                )
        cycle = CycleState() if cycle is None else cycle
        results: dict[str, ProfileResult | None] = {}
        handler, timers = self.handler, self._timers
        while True:
            t0 = perf_counter_ns()
            todo = handler.pick_profiles(cycle, request, self.profiles, results)
            if timers is not None:
                timers[PROFILE_PICKER][0](perf_counter_ns() - t0)
            if not todo:
                break
            for name, profile in todo.items():
                results[name] = profile.run(cycle, request, candidates)
        t0 = perf_counter_ns()
        result = handler.process_results(cycle, request, results)
        if timers is not None:
            timers[PROCESS_PROFILES_RESULTS][0](perf_counter_ns() - t0)
        if not result.endpoints:
            raise RequestError(
                429, "all endpoints were filtered out or are saturated", error_type="rate_limit_exceeded",
                code="rejected_saturated", reason="rejected-saturated",
            )
        self._run_hooks(
            self.pre_request_plugins, PRE_REQUEST, "PreRequest", request, lambda p: p.pre_request(cycle, request, result)
        )
        return result

    @property
    def wants_response_metadata(self) -> bool:
        """Whether any plugin reads the gateway's response-phase metadata (else callers skip decoding it)."""
        return bool(self.response_received_plugins)

    def response_headers(
        self, request: LLMRequest, endpoint: EndpointState, metadata: Mapping[str, Any] | None = None
    ) -> dict[str, str]:
        """Headers the plugins want on the client response from ``endpoint`` (later plugins win).

        ``metadata`` is the gateway's response-phase metadata for ResponseReceived plugins (empty if absent).
        """
        headers: dict[str, str] = {}
        self._run_hooks(
            self.response_header_plugins, RESPONSE_RECEIVED, "ResponseHeaders", request,
            lambda p: headers.update(p.response_headers(request, endpoint)),
        )
        self._run_hooks(
            self.response_received_plugins, RESPONSE_RECEIVED, "ResponseReceived", request,
            lambda p: headers.update(p.response_received(request, endpoint, metadata or {})),
            first_recorder=len(self.response_header_plugins),  # their recorders follow the header plugins'
        )
        return headers

    def response_started(self, request: LLMRequest, endpoint: EndpointState) -> None:
        """The caller (director, replay) saw ``endpoint``'s first response bytes for ``request``: once
        per request, before ``response_complete``."""
        self._run_hooks(
            self.response_started_plugins, RESPONSE_STREAMING, "ResponseStarted", request,
            lambda p: p.response_started(request, endpoint),
        )

    def response_complete(self, request: LLMRequest, endpoint: EndpointState, usage: Mapping[str, int],
                          failure: str | None = None) -> None:
        """The response has ended. Callers call it once per scheduled request, also when usage is unknown
        (empty ``usage``), so plugins tracking requests in flight can release them. With ``failure`` (the
        request got no working answer) ResponseFailed plugins hear ``response_failed`` instead."""
        def call(p: ResponseComplete) -> None:
            if failure is None:
                p.response_complete(request, endpoint, usage)
            elif isinstance(p, ResponseFailed):
                p.response_failed(request, endpoint, failure)
            else:
                p.response_complete(request, endpoint, {})

        self._run_hooks(self.response_complete_plugins, RESPONSE_COMPLETE, "ResponseComplete", request, call)

    def response_metadata(
        self, request: LLMRequest, endpoint: EndpointState, usage: Mapping[str, int]
    ) -> dict[str, dict[str, Any]]:
        """Dynamic metadata the plugins report for an ended response (later plugins win per key); a
        plugin that raises is logged and skipped like any hook."""
        merged: dict[str, dict[str, Any]] = {}

        def collect(plugin: ResponseMetadata) -> None:
            for namespace, values in plugin.response_metadata(request, endpoint, usage).items():
                merged.setdefault(namespace, {}).update(values)

        self._run_hooks(self.response_metadata_plugins, RESPONSE_COMPLETE, "ResponseMetadata", request, collect,
                        first_recorder=len(self.response_complete_plugins))  # their recorders follow ResponseComplete's
        return merged

    def _run_hooks(
        self, plugins: Sequence[P], point: str, hook: str, request: LLMRequest, call: Callable[[P], object],
        first_recorder: int = 0,
    ) -> None:
        """``call`` each plugin, timed into ``point``'s recorders (from ``first_recorder`` on) when
        instrumented; a plugin that raises is logged and skipped, never fails the request."""
        recorders = None if self._timers is None else self._timers[point]
        for i, plugin in enumerate(plugins, first_recorder):
            t0 = perf_counter_ns()
            try:
                call(plugin)
            except Exception:
                self._hook_failed(plugin, hook, request)
            if recorders is not None:
                recorders[i](perf_counter_ns() - t0)

    def _hook_failed(self, plugin: Plugin, hook: str, request: LLMRequest) -> None:
        """Log one failed hook call (called from inside the ``except``)."""
        key = (id(plugin), hook)
        first = key not in self._hook_failures
        self._hook_failures.add(key)
        log.log(logging.ERROR if first else logging.DEBUG, "plugin %s failed in %s (request id=%s)%s",
                plugin.typed_name, hook, request.request_id or "-",
                "; later failures of this hook are logged at debug level" if first else "", exc_info=first)


def _merge(explicit: Sequence[Plugin], derived: Sequence[Plugin]) -> list:  # type: ignore[type-arg]
    """Explicit hooks first, then the plugins' own, each once."""
    out = list(explicit)
    out.extend(p for p in derived if all(p is not q for q in out))
    return out
