"""Plugin contracts, after GIE's ``framework/interface/scheduling``: one small protocol per extension point.

Optional capabilities are protocols too, and this is the one place they are declared: the scheduler
classifies its plugins once, when it is built (``Scheduler.__init__``), and every caller uses those
lists — nothing probes a plugin with ``hasattr`` or ``getattr``.

Scores are lists aligned with the endpoint list a scorer was given (no per-call dicts on the hot path),
each value meant to lie in [0, 1]; the profile clamps and weights them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from epp.datastore import EndpointState
from epp.plugin.typed_name import Plugin
from epp.request import LLMRequest

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

    from epp.datastore import Endpoint
    from epp.scheduling.profile import SchedulerProfile


class CycleState(dict[str, Any]):
    """Scratch space for one scheduling cycle, shared by the plugins of all its profiles.

    Producers (e.g. the prefix matcher) write under their plugin name so a scorer and the PreRequest
    hook that follows can reuse work instead of hashing the prompt twice.
    """


# Extension-point names as the reference reports them in ``plugin_duration_seconds{extension_point}``.
# epp's ResponseHeaders hooks are reported with the ResponseReceived ones (both run in the response-headers
# phase, where GIE's ResponseReceived does), and ResponseStarted (once, at the first body chunk) as GIE's
# per-chunk ResponseStreaming.
PROFILE_PICKER = "ProfilePicker"
PROCESS_PROFILES_RESULTS = "ProcessProfilesResults"
FILTER = "Filter"
SCORER = "Scorer"
PICKER = "Picker"
PRE_REQUEST = "PreRequest"
RESPONSE_RECEIVED = "ResponseReceived"
RESPONSE_STREAMING = "ResponseStreaming"
RESPONSE_COMPLETE = "ResponseComplete"

DurationRecorder = Callable[[int], None]
"""Told the nanoseconds one plugin call took."""


class PluginTimer(Protocol):
    """What ``Scheduler.instrument`` takes: one recorder per (extension point, plugin), resolved when
    instrumenting so a timed call costs a clock read and a call, not a lookup."""

    def recorder(self, extension_point: str, plugin: Plugin) -> DurationRecorder: ...


@runtime_checkable
class Filter(Plugin, Protocol):
    def filter(self, cycle: CycleState, request: LLMRequest, endpoints: list[EndpointState]) -> list[EndpointState]:
        """Return the subset that may serve ``request``, in the given order."""
        ...


@runtime_checkable
class Scorer(Plugin, Protocol):
    def score(self, cycle: CycleState, request: LLMRequest, endpoints: list[EndpointState]) -> Sequence[float]:
        """One score per endpoint, aligned with ``endpoints``; higher is better, meant to lie in [0, 1]."""
        ...


@runtime_checkable
class Picker(Plugin, Protocol):
    def pick(
        self, cycle: CycleState, request: LLMRequest, endpoints: list[EndpointState], scores: list[float]
    ) -> list[EndpointState]:
        """Choose from scored endpoints: best first, as many as the picker's ``maxNumOfEndpoints``."""
        ...


@dataclass(slots=True)
class ProfileResult:
    """What one profile picked: ``endpoints[0]`` is the primary, the rest are the fallback list.

    ``candidates`` are the endpoints that passed the filters and ``totals`` their weighted scores
    (aligned); ``scores`` maps names to totals on demand, off the hot path.
    """

    endpoints: list[EndpointState]
    candidates: list[EndpointState] = field(default_factory=list)
    totals: list[float] = field(default_factory=list)

    @property
    def scores(self) -> dict[str, float]:
        return {e.name: t for e, t in zip(self.candidates, self.totals)}


@dataclass(slots=True)
class SchedulingResult:
    """All profiles' picks for one request; the primary profile's endpoints are where it is sent."""

    profile_results: dict[str, ProfileResult | None]
    primary_profile: str
    port: int | None = None
    """The port every pick is sent to instead of its own, when the profile handler rewrites it
    (``data-parallel-profile-handler``'s ``primaryPort``: DP ranks behind one pod port)."""

    @property
    def endpoints(self) -> list[EndpointState]:
        primary = self.profile_results.get(self.primary_profile)
        return primary.endpoints if primary is not None else []


@runtime_checkable
class ProfileHandler(Plugin, Protocol):
    def pick_profiles(
        self,
        cycle: CycleState,
        request: LLMRequest,
        profiles: Mapping[str, SchedulerProfile],
        results: Mapping[str, ProfileResult | None],
    ) -> dict[str, SchedulerProfile]:
        """Profiles to run next, given the results so far; empty ends the loop."""
        ...

    def process_results(
        self, cycle: CycleState, request: LLMRequest, results: dict[str, ProfileResult | None]
    ) -> SchedulingResult:
        """Combine the profiles' results into the final decision."""
        ...


@runtime_checkable
class PreRequest(Plugin, Protocol):
    def pre_request(self, cycle: CycleState, request: LLMRequest, result: SchedulingResult) -> None:
        """Called once the pick is final, before the request is forwarded (e.g. to update a prefix index)."""
        ...


@runtime_checkable
class ResponseHeaders(Plugin, Protocol):
    def response_headers(self, request: LLMRequest, endpoint: EndpointState) -> Mapping[str, str]:
        """Headers to add to the client's response once the endpoint answers (e.g. a session token)."""
        ...


@runtime_checkable
class ResponseReceived(Plugin, Protocol):
    def response_received(
        self, request: LLMRequest, endpoint: EndpointState, metadata: Mapping[str, Any]
    ) -> Mapping[str, str]:
        """Like ``response_headers``, with the gateway's response-phase metadata as plain data
        (``metadata_context.filter_metadata``: namespace → struct, e.g. ``envoy.lb`` carrying the endpoint
        that served the request). Headers returned are added to the client's response."""
        ...


@runtime_checkable
class ResponseStarted(Plugin, Protocol):
    def response_started(self, request: LLMRequest, endpoint: EndpointState) -> None:
        """Called once when the endpoint's first response body bytes arrive: for a generation request
        that is its first token, so the prompt's prefill is over (load that reacts before the next scrape)."""
        ...


@runtime_checkable
class ResponseComplete(Plugin, Protocol):
    def response_complete(self, request: LLMRequest, endpoint: EndpointState, usage: Mapping[str, int]) -> None:
        """Called when the response has ended, with the engine's usage counts when it reported them."""
        ...


@runtime_checkable
class ResponseFailed(Plugin, Protocol):
    def response_failed(self, request: LLMRequest, endpoint: EndpointState, reason: str) -> None:
        """Called *instead of* ``response_complete`` when the request got no working answer from
        ``endpoint`` (``reason``: ``http-503``, ``failover``…): it computed and cached
        nothing there, so release what was booked for it without learning from it — a fast failure is
        not a fast completion. Plugins without this hook get ``response_complete`` with empty usage."""
        ...


@runtime_checkable
class Admitter(Plugin, Protocol):
    def admit(self, request: LLMRequest, endpoints: Sequence[EndpointState]) -> str | None:
        """Before scheduling: None to let the request in, else why it is refused (answered 429)."""
        ...


@runtime_checkable
class Screener(Plugin, Protocol):
    def screen(self, request: LLMRequest, endpoints: list[EndpointState]) -> list[EndpointState]:
        """Once per request, before any profile: the candidates every profile may see (none answers 503)."""
        ...


@runtime_checkable
class RequestProcessor(Plugin, Protocol):
    def process_request(self, request: LLMRequest) -> None:
        """Before admission: derive request fields from its headers (e.g. the fairness flow of an agent session)."""
        ...


@runtime_checkable
class ResponseMetadata(Plugin, Protocol):
    def response_metadata(
        self, request: LLMRequest, endpoint: EndpointState, usage: Mapping[str, int]
    ) -> Mapping[str, Mapping[str, Any]]:
        """When the response has ended: dynamic metadata for the gateway, namespace → key → value."""
        ...


@runtime_checkable
class MembershipListener(Plugin, Protocol):
    """Keeps per-endpoint state (a prefix index, an LRU): told about membership so removed endpoints are
    purged (``Scheduler.attach`` subscribes it to the datastore)."""

    def endpoint_added(self, endpoint: Endpoint) -> None: ...

    def endpoint_removed(self, endpoint: Endpoint) -> None: ...


@runtime_checkable
class MetricsExporter(Plugin, Protocol):
    def register_metrics(self, registry: CollectorRegistry) -> None:
        """Export the plugin's own series to ``registry`` (the composition root calls it once, at start)."""
        ...
