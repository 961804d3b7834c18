"""The one request lifecycle, driven by ``epp serve`` (``epp.extproc``) and by ``epp replay``
(``epp.replay.offline`` in virtual time, live through serve): no gRPC types, no wall clock, no I/O here.

``submit`` turns a parsed request into a ``RoutingDecision`` (objective priority → model rewrite →
routable candidates → admission → scheduler → fallbacks → in-flight accounting → headers) or a
``RequestError``, handed to its ``done`` callback; ``finish`` ends a routed request once with its outcome
(usage into the recorder and the scheduler's hooks, in-flight released, the outcome into the endpoint's
passive health, admission told). A failed request is never reported to plugins as a completion: they
hear ``response_failed`` (``Failure``). Every refusal is a ``RequestError``; ``reject`` counts and logs
it exactly once.

Three narrow interfaces are injected, so both drivers run this same code: a ``RequestRecorder``
(Prometheus telemetry in serve, the replay's per-band tally offline), an ``AdmissionPolicy`` (shed
sheddable requests when saturated, as GIE does; or llm-d's flow control, which holds a request until
the pool has room and then calls back), and a ``Clock`` (wall or virtual).
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import orjson

from epp._util.clock import Clock, WallClock
from epp._util.logs import clip, fields
from epp.datastore import Datastore, EndpointState
from epp.request import LLMRequest, RequestError
from epp.request.headers import (
    DESTINATION_HEADER,
    DROPPED_REASON_HEADER,
    LB_METADATA_NAMESPACE,
    MODEL_NAME_HEADER,
    REQUEST_ID_HEADER,
    SCORES_KEY,
    SERVED_KEY,
    SUBSET_KEY,
)
from epp.request.parsers import RequestParsers, default_parsers
from epp.request.usage import Usage
from epp.scheduling.framework import SchedulingResult
from epp.scheduling.scheduler import Scheduler

log = logging.getLogger(__name__)


# Headers the picker owns: never re-emitted from the stored request headers (gie-facts A3).
SYSTEM_HEADERS = frozenset({
    "x-llm-d-inference-objective", "x-gateway-inference-objective",
    "x-llm-d-inference-fairness-id", "x-gateway-inference-fairness-id",
    "x-llm-d-model-name-rewrite", "x-gateway-model-name-rewrite",
    "x-llm-d-slo-ttft-ms", "x-slo-ttft-ms", "x-llm-d-slo-tpot-ms", "x-slo-tpot-ms",
    SUBSET_KEY, DESTINATION_HEADER, SERVED_KEY,
    DROPPED_REASON_HEADER, "content-length",
})


class Saturation(Protocol):
    """Admission input: is the pool too loaded to take sheddable (priority < 0) work?"""

    def is_saturated(self, endpoints: Sequence[EndpointState]) -> bool: ...


@dataclass(frozen=True, slots=True)
class Failure:
    """Why a routed request did not get a working answer. ``reason`` is short and fixed (``http-503``,
    ``failover``); ``endpoint_fault`` is whether it counts against the endpoint's health (5xx, which
    includes Envoy's own for a connect failure, reset or timeout) or only means nothing was computed (4xx)."""

    reason: str
    endpoint_fault: bool = True

    @classmethod
    def from_status(cls, status: int) -> Failure | None:
        """The failure an HTTP status means, or None for a working answer (1xx-3xx)."""
        if status < 400:
            return None
        return cls(f"http-{status}", endpoint_fault=status >= 500)


FAILOVER = Failure("failover")  # the primary failed; the gateway's retry was answered by a fallback


class RequestRecorder(Protocol):
    """What the director reports at each step of a request's life (``epp.telemetry.Telemetry`` in serve)."""

    def scheduled(self, duration: float, target_model: str, endpoint: EndpointState | None) -> None: ...

    def request_routed(self, request: LLMRequest, body_bytes: int) -> None: ...

    def request_rejected(self, model: str, target_model: str, error: RequestError,
                         request: LLMRequest | None = None) -> None: ...

    def request_finished(self, request: LLMRequest, duration: float, response_bytes: int | None, usage: Usage) -> None: ...

    def model_rewritten(self, rewrite_name: str, model: str, target_model: str) -> None: ...


Proceed = Callable[["RequestError | None"], None]
"""Admission's answer for one request: None to schedule it now, else the refusal."""


class Waiting(Protocol):
    """A request an admission policy holds (a flow-control queue entry)."""

    def cancel(self) -> None:
        """The client gave up: drop the request; ``proceed`` is never called for it."""


class AdmissionPolicy(Protocol):
    """Decides when a request may be scheduled. ``admit`` calls ``proceed`` exactly once: at once (and
    returns None), or later from ``released``/``tick`` (and returns the ``Waiting`` entry)."""

    @property
    def waiting(self) -> int:
        """Requests held right now."""
        ...

    @property
    def waits_for_endpoints(self) -> bool:
        """Whether a request that finds the pool empty waits for endpoints (flow control) instead of a 503."""
        ...

    def admit(self, request: LLMRequest, body_size: int, candidates: Sequence[EndpointState],
              proceed: Proceed) -> Waiting | None: ...

    def released(self, request: LLMRequest, usage: Usage) -> None:
        """A routed request ended (``usage`` as the engine reported it): capacity may have freed up."""

    def tick(self) -> None:
        """Time passed or metrics changed: expire deadlines, dispatch what now fits."""


class ShedSheddable:
    """GIE's admission (and llm-d's without flow control): a sheddable request (priority < 0) is refused
    with 429 while the pool is saturated; everything else is scheduled at once. Holds nothing."""

    waiting = 0
    waits_for_endpoints = False

    def __init__(self, saturation: Saturation | None) -> None:
        self.saturation = saturation

    def admit(self, request: LLMRequest, body_size: int, candidates: Sequence[EndpointState],
              proceed: Proceed) -> None:
        if request.priority < 0 and self.saturation is not None and self.saturation.is_saturated(candidates):
            proceed(RequestError(429, "system is saturated; sheddable request dropped",
                                 error_type="rate_limit_exceeded", code="saturated"))
        else:
            proceed(None)

    def released(self, request: LLMRequest, usage: Usage) -> None:
        pass

    def tick(self) -> None:
        pass


# Incoming model → (InferenceModelRewrite name, target model), or None when no rule applies.
ModelRewriter = Callable[[str], "tuple[str, str] | None"]


@dataclass(frozen=True, slots=True)
class RoutingAnswer:
    """What the gateway is told for one routed request, built only by ``RoutingDecision.answer``.

    ``headers``: request headers to set upstream: those plugins added or changed, the destination
    (``x-gateway-destination-endpoint``: the primary, then any fallbacks, comma-separated), the target
    model name, a generated request id, and ``content-length`` when the body was replaced. ``metadata``:
    the dynamic metadata (namespace → key → value): ``envoy.lb``'s copy of the destination, which must
    equal the header (override_host reads the metadata, ORIGINAL_DST the header), plus every scored
    endpoint's score with ``--emit-endpoint-scores``. ``remove``: client headers a plugin dropped.
    ``body``: the replacement request body (model rewrite), else None.
    """

    headers: dict[str, str]
    metadata: dict[str, dict[str, Any]]
    remove: tuple[str, ...] = ()
    body: bytes | None = None


@dataclass(slots=True)
class RoutingDecision:
    """Where one request goes. ``endpoints[0]`` is the primary, the rest a fallback list in order.

    ``body`` is set only when the request body had to change (model rewrite); ``plugin_headers`` are the
    request headers plugins added or changed (system headers excepted). ``answer`` turns the decision
    into what the gateway is told.
    """

    request: LLMRequest
    endpoints: list[EndpointState]
    started_at: float
    plugin_headers: dict[str, str] = field(default_factory=dict)
    body: bytes | None = None
    tokens: int = 0
    started: bool = False
    finished: bool = False
    scores: dict[str, float] | None = None  # ip:port → primary-profile score, with --emit-endpoint-scores
    metadata: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Dynamic metadata plugins reported when the response ended (namespace → key → value)."""
    removed_headers: list[str] = field(default_factory=list)
    """Client headers a plugin dropped (e.g. a forged prefill-host header): removed upstream too."""
    port: int | None = None
    """Send to this port of each picked endpoint's address instead of its own (``SchedulingResult.port``)."""

    @property
    def destination(self) -> str:
        if self.port is None:
            return ",".join(e.hostport for e in self.endpoints)
        return ",".join(e.endpoint.with_port(self.port) for e in self.endpoints)

    def answer(self, generated_request_id: str | None = None) -> RoutingAnswer:
        """The routing answer: the destination header and its ``envoy.lb`` metadata twin (with the scores)
        come from here only, so they cannot disagree. ``generated_request_id``: the id the picker made up
        for a request without ``x-request-id``, passed upstream so the engine logs the same id."""
        destination = self.destination
        headers = dict(self.plugin_headers)
        headers[DESTINATION_HEADER] = destination
        if self.request.target_model:
            headers[MODEL_NAME_HEADER] = self.request.target_model
        if generated_request_id is not None:
            headers[REQUEST_ID_HEADER] = generated_request_id
        if self.body is not None:
            headers["content-length"] = str(len(self.body))
        lb: dict[str, Any] = {DESTINATION_HEADER: destination}
        if self.scores is not None:
            lb[SCORES_KEY] = dict(self.scores)
        return RoutingAnswer(headers, {LB_METADATA_NAMESPACE: lb}, tuple(self.removed_headers), self.body)

    @property
    def target_model(self) -> str:
        return self.request.target_model


def no_endpoints(message: str) -> RequestError:
    return RequestError(503, message, error_type="service_unavailable", code="no_endpoints",
                        reason="rejected-no-endpoints")


class Director:
    """Routes requests over the datastore's endpoints with one scheduler; holds no per-request state."""

    def __init__(
        self,
        datastore: Datastore,
        scheduler: Scheduler,
        telemetry: RequestRecorder,
        *,
        admission: AdmissionPolicy | None = None,
        objective_priority: Callable[[str], int] | None = None,
        model_rewriter: ModelRewriter | None = None,
        subset_filter: bool = True,
        clock: Clock | None = None,
        rng: random.Random | None = None,
        parsers: RequestParsers | None = None,
        emit_endpoint_scores: bool = False,
        fallbacks: int = 0,
    ) -> None:
        """``fallbacks``: healthy endpoints added after the picker's own (next best by score) to the
        destination list, for gateways that retry down the list (override_host); 0 leaves the list as
        the picker made it (a single endpoint, which ORIGINAL_DST gateways require)."""
        if fallbacks < 0:
            raise ValueError("the number of fallback endpoints must not be negative")
        self.fallbacks = fallbacks
        self.datastore = datastore
        self.parsers = parsers or default_parsers()  # requestHandler.parsers: request bytes → LLMRequest
        self.emit_endpoint_scores = emit_endpoint_scores
        self.scheduler = scheduler
        self.telemetry = telemetry
        self.admission: AdmissionPolicy = admission or ShedSheddable(scheduler.saturation_detector)
        self.objective_priority = objective_priority
        self.model_rewriter = model_rewriter
        self.subset_filter = subset_filter
        self.clock: Clock = clock or WallClock()
        self._rng = rng or random.Random()

    # -- request phase --------------------------------------------------------------------------
    def submit(self, request: LLMRequest, body_size: int, subset: Sequence[object] | None,
               done: Callable[[RoutingDecision | RequestError], None]) -> Waiting | None:
        """Route a parsed request: ``done`` gets the decision or the refusal exactly once, now (returns
        None) or once admission lets the request through (returns its ``Waiting`` entry, to cancel it)."""
        started = self.clock.now()
        for processor in self.scheduler.request_processors:
            processor.process_request(request)
        if request.objective and self.objective_priority is not None:
            request.priority = self.objective_priority(request.objective)
        original_headers = dict(request.headers)
        try:
            body = self._apply_rewrite(request)
            candidates = self._candidates_to_admit(subset)
        except RequestError as error:
            done(error)
            return None
        immediate = True

        def proceed(refusal: RequestError | None) -> None:
            if refusal is not None:
                done(refusal)
                return
            try:  # a request that waited is scheduled over the pool as it is now
                pool = candidates if immediate else self.candidates(subset)
                done(self._schedule(request, pool, started, body, body_size, original_headers))
            except RequestError as error:
                done(error)

        waiting = self.admission.admit(request, len(body) if body is not None else body_size, candidates, proceed)
        immediate = False
        return waiting

    def route(self, request: LLMRequest, body_size: int, subset: Sequence[object] | None = None) -> RoutingDecision:
        """``submit`` for callers that cannot wait (tests, benches): raises ``RequestError`` for every
        refusal, and ``RuntimeError`` if the admission policy would hold the request."""
        outcome: list[RoutingDecision | RequestError] = []
        waiting = self.submit(request, body_size, subset, outcome.append)
        if waiting is not None:
            waiting.cancel()
            raise RuntimeError("the admission policy queued the request; use submit()")
        if isinstance(outcome[0], RequestError):
            raise outcome[0]
        return outcome[0]

    def _schedule(self, request: LLMRequest, candidates: list[EndpointState], started: float, body: bytes | None,
                  body_size: int, original_headers: Mapping[str, str]) -> RoutingDecision:
        for admitter in self.scheduler.admitters:  # admitter plugins decide after admission (flow control) let it go
            if (refusal := admitter.admit(request, candidates)) is not None:
                raise RequestError(429, refusal, error_type="rate_limit_exceeded", code="rejected")
        t0 = self.clock.now()
        try:
            result = self.scheduler.schedule(request, candidates)
        except RequestError:
            self.telemetry.scheduled(self.clock.now() - t0, request.target_model, None)
            raise
        finally:  # the cycle (PreRequest hooks included) is over: a routed request must not hold its hashes
            request.block_hashes.clear()
        picked = result.endpoints
        if self.fallbacks:
            picked = self._with_fallbacks(result)
        self.telemetry.scheduled(self.clock.now() - t0, request.target_model, picked[0])
        decision = RoutingDecision(request, picked, started, body=body, tokens=request.estimated_prompt_tokens,
                                   port=result.port)
        if self.emit_endpoint_scores:
            primary = result.profile_results.get(result.primary_profile)
            if primary is not None:
                decision.scores = {e.hostport: t for e, t in zip(primary.candidates, primary.totals)}
        if request.headers != original_headers:  # most picks change no header: one C-level comparison then
            decision.plugin_headers = self._plugin_headers(request, original_headers)
            decision.removed_headers = [n for n in original_headers if n not in request.headers and not n.startswith(":")]
        self.datastore.request_started(picked[0].name, decision.tokens)
        self.datastore.routed(picked[0])
        self.telemetry.request_routed(request, len(body) if body is not None else body_size)
        if log.isEnabledFor(logging.DEBUG):
            rid, model = clip(request.request_id), clip(request.target_model)
            log.debug("routed request id=%s model=%s to %s", rid, model, decision.destination,
                      extra=fields(request_id=rid, model=model, endpoint=decision.destination))
        return decision

    def route_any(self, request: LLMRequest) -> RoutingDecision:
        """Body-less request (GET …): a uniformly random endpoint, no scheduling, as the reference does."""
        states = self.datastore.endpoints()
        if not states:
            raise RequestError(500, "no pods available in datastore", error_type="server_error", code="no_endpoints")
        decision = RoutingDecision(request, [self._rng.choice(self.datastore.routable(states))], self.clock.now())
        self.datastore.request_started(decision.endpoints[0].name, 0)
        self.datastore.routed(decision.endpoints[0])
        self.telemetry.request_routed(request, 0)
        return decision

    def _candidates_to_admit(self, subset: Sequence[object] | None) -> list[EndpointState]:
        """The candidates, or none at all when the admission policy waits for endpoints to appear."""
        try:
            return self.candidates(subset)
        except RequestError as error:
            if error.code == "no_endpoints" and self.admission.waits_for_endpoints:
                return []
            raise

    def candidates(self, subset: Sequence[object] | None) -> list[EndpointState]:
        """Routable pool members (``Datastore.routable``: ejected endpoints out unless nothing else is left),
        narrowed by the gateway's subset hint (matched on IP only, every port qualifies)."""
        states = self.datastore.endpoints()
        if subset is None or not self.subset_filter:
            if not states:
                raise no_endpoints("no endpoints available in the pool")
            return self.datastore.routable(states)
        if not subset:
            raise no_endpoints("the gateway's endpoint subset hint is empty")
        ips = {_ip_of(s) for s in subset if isinstance(s, str)}
        matched = [s for s in states if s.endpoint.address in ips]
        if not matched:
            raise no_endpoints("no pool endpoint matches the gateway's endpoint subset hint")
        return self.datastore.routable(matched)

    def _with_fallbacks(self, result: SchedulingResult) -> list[EndpointState]:
        """The picker's endpoints, then up to ``fallbacks`` more of the profile's candidates, best
        total score first (candidates were already routable)."""
        picked = list(result.endpoints)
        profile = result.profile_results.get(result.primary_profile)
        if profile is None:
            return picked
        chosen = {id(e) for e in picked}
        best_first = sorted(range(len(profile.totals)), key=profile.totals.__getitem__, reverse=True)
        extra = [profile.candidates[i] for i in best_first if id(profile.candidates[i]) not in chosen]
        return picked + extra[: self.fallbacks]

    # -- response phase -------------------------------------------------------------------------
    def response_started(self, decision: RoutingDecision) -> None:
        """The endpoint's first response body bytes arrived (for a stream, its first token): tell the
        scheduler's ResponseStarted plugins once, so load they track reacts before the next scrape."""
        if decision.started or decision.finished:
            return
        decision.started = True
        self.scheduler.response_started(decision.request, decision.endpoints[0])

    def finish(self, decision: RoutingDecision, usage: Usage | None = None, response_bytes: int | None = None,
               failure: Failure | None = None, *, judged: bool = True) -> None:
        """The request is over (response done, or the stream ended): release it once and record what was
        seen. ResponseComplete plugins hear of every working answer, with empty usage when none was
        reported; a ``failure`` goes to ResponseFailed plugins instead (nothing was computed) and, when
        it is the endpoint's fault, to its passive health. ``judged=False``: the outcome is unknown.
        Admission is told in every case: a failed request frees its capacity too."""
        if decision.finished:
            return
        decision.finished = True
        primary = decision.endpoints[0]
        request = decision.request
        self.datastore.request_finished(primary.name, decision.tokens, started_on=primary)
        fault = failure.reason if failure is not None and failure.endpoint_fault else None
        self.datastore.request_outcome(primary, fault, judged=judged)
        seen = usage or Usage()
        self.telemetry.request_finished(request, self.clock.now() - decision.started_at, response_bytes, seen)
        usage_counts = seen.as_dict() if seen.known else {}
        self.scheduler.response_complete(request, primary, usage_counts, failure.reason if failure is not None else None)
        if self.scheduler.response_metadata_plugins:
            decision.metadata = self.scheduler.response_metadata(request, primary, usage_counts)
        self.admission.released(request, seen)

    @property
    def wants_response_metadata(self) -> bool:
        """Whether ``response_headers`` needs the gateway's response-phase metadata (decoding it costs)."""
        return self.scheduler.wants_response_metadata

    def response_headers(self, decision: RoutingDecision, metadata: Mapping[str, Any] | None = None) -> dict[str, str]:
        """Headers the scheduler's plugins add to the client response (e.g. ``x-session-token``);
        ``metadata`` is what the gateway reported with the response (e.g. the endpoint that served it)."""
        return self.scheduler.response_headers(decision.request, decision.endpoints[0], metadata)

    def reject(self, error: RequestError, request_id: str, path: str, request: LLMRequest | None = None) -> None:
        """Count and log one refusal: one line with the reason, never the body or credentials."""
        model = request.model if request is not None else ""
        target = request.target_model if request is not None else ""
        self.telemetry.request_rejected(model, target, error, request)
        reason = error.reason or error.code or "-"
        rid, path, model_name = clip(request_id), clip(path), clip(model or "-")
        log.info("rejected request id=%s path=%s model=%s status=%d reason=%s: %s",
                 rid, path, model_name, error.status, reason, error.message,
                 extra=fields(request_id=rid, path=path, model=model_name, status=error.status, reason=reason))

    # -- helpers --------------------------------------------------------------------------------
    def _apply_rewrite(self, request: LLMRequest) -> bytes | None:
        """Set the target model (rewrite header first, then an InferenceModelRewrite rule, else the incoming
        name; gie-facts A7) and re-serialize the body if it changed. Each rule decision is counted."""
        if request.target_model == request.model and request.model and self.model_rewriter is not None:
            decision = self.model_rewriter(request.model)
            if decision is not None:
                rewrite_name, request.target_model = decision
                self.telemetry.model_rewritten(rewrite_name, request.model, request.target_model)
        if request.target_model == request.model or request.body is None:
            return None
        request.body["model"] = request.target_model
        try:
            return orjson.dumps(request.body)
        except orjson.JSONEncodeError:  # deeper than orjson writes (254 levels) in a field the parser skipped
            raise RequestError(400, "request body is nested too deeply to rewrite its model",
                               code="invalid_body") from None

    @staticmethod
    def _plugin_headers(request: LLMRequest, original: Mapping[str, str]) -> dict[str, str]:
        """Headers a plugin added or changed (system headers excepted: the answer sets those)."""
        return {
            name: value for name, value in request.headers.items()
            if original.get(name) != value and name not in SYSTEM_HEADERS and not name.startswith(":")
        }


def _ip_of(hostport: str) -> str:
    """``10.0.0.1:8000`` → ``10.0.0.1``; ``[fd00::1]:8000`` → ``fd00::1``; a bare IP stays as it is."""
    host = hostport.strip()
    if host.startswith("["):
        return host[1:].split("]", 1)[0]
    if host.count(":") == 1:
        return host.rsplit(":", 1)[0]
    return host
