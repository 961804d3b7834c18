"""llm-d's flow controller as the director's admission policy: requests wait in priority bands while
the pool is saturated, instead of being shed, and leave in an order set by the configured policies.

One request's life here (llm-d-router ``pkg/epp/flowcontrol``):

* ``admit`` — the request joins its band (by priority: a configured band, else one provisioned from
  ``defaultPriorityBand`` / ``defaultNegativePriorityBand``) and its flow (by fairness id). If that
  would exceed the global or the band's ``maxBytes``/``maxRequests`` it is rejected at once: 429
  ``rejected-saturated``, or 503 ``rejected-no-endpoints`` while the pool is empty.
* dispatch cycles — run after every enqueue, every finished request (``released``) and every
  ``tick``: read pool saturation from the injected detector, ask the usage-limit policy for one
  ceiling per band, and walk the bands from the highest priority: the first band whose ceiling
  saturation has reached stops the cycle (head-of-line blocking: lower bands never overtake a gated
  higher one); otherwise the band's fairness policy picks a flow and its ordering policy's head is
  dispatched (``proceed(None)``: the director schedules it over the pool as it is now). Cycles repeat
  until nothing can go.
* deadlines — a request still queued after its TTL (``defaultRequestTTL``, shortened by the
  ``x-llm-d-inference-ttl`` header; 0 = none) is evicted with 429 ``rejected-ttl-expired``; while the
  pool has no endpoints ``noEndpointRequestTTL`` applies instead (503 ``rejected-no-endpoints``), each
  change between the two regimes starting a fresh budget. ``tick`` checks them.
* ``cancel`` — the client went away: the request leaves its queue and nobody is answered.

Memory is bounded by configuration: queued requests ≤ ``maxRequests`` (global, or the sum of the
bands' limits), queued body bytes ≤ ``maxBytes`` (global, else 1 GB per band, llm-d's default); a
flow exists only while it has queued requests, bands only for priorities that occurred (priorities
come from InferenceObjectives, not from clients); cancelled and expired entries are dropped lazily and
compacted once they outnumber live ones.

Nothing here does I/O or reads a wall clock: ``epp serve`` ticks it from an asyncio task, offline
replay at each metrics poll in virtual time.
"""

from __future__ import annotations

import heapq
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum
from time import perf_counter
from typing import Any, Protocol

from epp._util.clock import Clock
from epp.datastore import EndpointState
from epp.director import Proceed
from epp.flowcontrol.policies import FairnessPolicy, OrderingPolicy, UsageLimitPolicy
from epp.request import LLMRequest, RequestError
from epp.request.usage import Usage

TTL_HEADER = "x-llm-d-inference-ttl"
DEFAULT_REQUEST_TTL = 60.0  # controller/config.go defaultRequestTTL
DEFAULT_NO_ENDPOINT_REQUEST_TTL = 60.0  # controller/config.go defaultNoEndpointRequestTTL
DEFAULT_BAND_MAX_BYTES = 1_000_000_000  # registry/config.go defaultPriorityBandMaxBytes


class Outcome(Enum):
    """Final states, named as llm-d's ``outcome`` metric label."""

    DISPATCHED = "Dispatched"
    REJECTED_CAPACITY = "RejectedCapacity"
    REJECTED_NO_ENDPOINTS = "RejectedNoEndpoints"
    EVICTED_TTL = "EvictedTTL"
    EVICTED_NO_ENDPOINTS = "EvictedNoEndpoints"
    EVICTED_CANCELLED = "EvictedContextCancelled"
    EVICTED_OTHER = "EvictedOther"


class SaturationSource(Protocol):
    def saturation(self, endpoints: Sequence[EndpointState]) -> float: ...


class FlowRecorder(Protocol):
    """Flow-control metrics (``epp.telemetry.flowcontrol`` in serve; nothing offline)."""

    def enqueued(self, request: LLMRequest, size: int) -> None: ...

    def left_queue(self, request: LLMRequest, size: int, outcome: Outcome, waited: float, queued: bool) -> None: ...

    def saturation(self, value: float) -> None: ...

    def dispatch_cycle(self, seconds: float) -> None: ...


class NoFlowRecorder:
    def enqueued(self, request: LLMRequest, size: int) -> None:
        pass

    def left_queue(self, request: LLMRequest, size: int, outcome: Outcome, waited: float, queued: bool) -> None:
        pass

    def saturation(self, value: float) -> None:
        pass

    def dispatch_cycle(self, seconds: float) -> None:
        pass


@dataclass(frozen=True, slots=True)
class BandSpec:
    """One priority band's limits and policies (a configured band, or a template for unseen priorities)."""

    max_bytes: int
    max_requests: int  # 0: no request-count limit
    fairness: FairnessPolicy
    ordering: OrderingPolicy


@dataclass(frozen=True, slots=True)
class FlowControlSettings:
    bands: Mapping[int, BandSpec]
    default_band: BandSpec
    default_negative_band: BandSpec | None
    usage_limit: UsageLimitPolicy
    max_bytes: int = 0  # 0: only the bands' limits apply
    max_requests: int = 0
    default_request_ttl: float = DEFAULT_REQUEST_TTL  # 0: no queue deadline
    no_endpoint_request_ttl: float = DEFAULT_NO_ENDPOINT_REQUEST_TTL

    def template(self, priority: int) -> BandSpec:
        if priority < 0 and self.default_negative_band is not None:
            return self.default_negative_band
        return self.default_band


class _Entry:
    """One queued request; the ``Waiting`` handle the director hands back to its driver."""

    __slots__ = ("seq", "request", "size", "enqueued_at", "received_at", "ttl", "headers", "proceed",
                 "band", "flow", "done", "controller", "budget_from")

    def __init__(self, controller: FlowController, seq: int, request: LLMRequest, size: int, now: float, ttl: float,
                 proceed: Proceed, band: _Band, flow: _Flow) -> None:
        self.controller = controller
        self.seq = seq
        self.request = request
        self.size = size
        self.enqueued_at = now
        self.received_at = now
        self.budget_from = now  # start of the current TTL budget (a regime change restarts it)
        self.ttl = ttl
        self.headers = request.headers
        self.proceed = proceed
        self.band = band
        self.flow = flow
        self.done = False

    def cancel(self) -> None:
        self.controller._finish(self, Outcome.EVICTED_CANCELLED, None)


class _Flow:
    """One fairness id's queue in one band: a heap by the band's ordering, dead entries dropped lazily."""

    __slots__ = ("flow_id", "heap", "live", "ordering")

    def __init__(self, flow_id: str, ordering: OrderingPolicy) -> None:
        self.flow_id = flow_id
        self.ordering = ordering
        self.heap: list[tuple[tuple[float, ...], _Entry]] = []
        self.live = 0

    def __len__(self) -> int:
        return self.live

    def push(self, entry: _Entry) -> None:
        heapq.heappush(self.heap, (self.ordering.key(entry), entry))
        self.live += 1

    def head(self) -> _Entry | None:
        heap = self.heap
        while heap and heap[0][1].done:
            heapq.heappop(heap)
        return heap[0][1] if heap else None

    def compact(self) -> None:
        if len(self.heap) > 2 * self.live + 16:
            self.heap = [e for e in self.heap if not e[1].done]
            heapq.heapify(self.heap)


@dataclass(slots=True)
class _Band:
    priority: int
    spec: BandSpec
    flows: dict[str, _Flow] = field(default_factory=dict)  # insertion order = order flows appeared
    count: int = 0
    bytes: int = 0
    state: dict[str, Any] = field(default_factory=dict)  # the fairness policy's per-band state


def _header_ttl(headers: Mapping[str, str]) -> float | None:
    raw = headers.get(TTL_HEADER)
    if raw is None:
        return None
    try:
        ttl = parse_go_duration(raw)
    except ValueError:
        return None
    return ttl if ttl > 0 else None


_GO_DURATION = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")
_UNIT = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_go_duration(text: str) -> float:
    """Go's ``time.ParseDuration`` syntax (``1500ms``, ``1m30s``) → seconds; ValueError otherwise."""
    text = text.strip()
    if not text:
        raise ValueError("empty duration")
    total, pos = 0.0, 0
    for m in _GO_DURATION.finditer(text):
        if m.start() != pos:
            break
        total += float(m.group(1)) * _UNIT[m.group(2)]
        pos = m.end()
    if pos != len(text):
        raise ValueError(f"not a duration: {text!r}")
    return total


def _capacity_error(pool_empty: bool) -> RequestError:
    if pool_empty:
        return RequestError(503, "no endpoints available: flow control queue at capacity", error_type="service_unavailable",
                            code="no_endpoints", reason="rejected-no-endpoints")
    return RequestError(429, "flow control queue at capacity", error_type="rate_limit_exceeded",
                        code="queue_at_capacity", reason="rejected-saturated")


def _ttl_error(pool_empty: bool) -> RequestError:
    if pool_empty:
        return RequestError(503, "request timed out in queue and no endpoints are available",
                            error_type="service_unavailable", code="no_endpoints", reason="rejected-no-endpoints")
    return RequestError(429, "request timed out in queue", error_type="rate_limit_exceeded", code="queue_ttl_expired",
                        reason="rejected-ttl-expired")


class FlowController:
    """The ``AdmissionPolicy`` of a config with ``featureGates: [flowControl]``.

    ``pool`` lists the pool's endpoints (the datastore's), ``detector`` turns them into saturation.
    """

    waits_for_endpoints = True

    def __init__(self, settings: FlowControlSettings, detector: SaturationSource,
                 pool: Callable[[], list[EndpointState]], clock: Clock, recorder: FlowRecorder | None = None) -> None:
        self.settings = settings
        self.detector = detector
        self.pool = pool
        self.clock = clock
        self.recorder: FlowRecorder = recorder or NoFlowRecorder()
        self._bands: dict[int, _Band] = {}
        self._ordered: list[_Band] = []  # highest priority first
        for priority, spec in settings.bands.items():
            self._band(priority, spec)
        if 0 not in self._bands:  # priority 0 always exists: the fallback band
            self._band(0, settings.default_band)
        self._count = 0
        self._bytes = 0
        self._seq = 0
        self._deadlines: list[tuple[float, int, _Entry]] = []
        self._pool_empty = False
        self._regime_since = clock.now()
        self._pumping = False
        self._shut = False
        self.peak_waiting = 0  # high-water marks, for the bound stated in bench/RESULTS.md
        self.peak_bytes = 0

    # -- AdmissionPolicy ------------------------------------------------------------------------
    @property
    def waiting(self) -> int:
        return self._count

    @property
    def queued_bytes(self) -> int:
        return self._bytes

    def admit(self, request: LLMRequest, body_size: int, candidates: Sequence[EndpointState],
              proceed: Proceed) -> _Entry | None:
        now = self.clock.now()
        band = self._bands.get(request.priority) or self._band(request.priority, self.settings.template(request.priority))
        if self._shut:
            self.recorder.left_queue(request, body_size, Outcome.EVICTED_OTHER, 0.0, False)
            proceed(RequestError(503, "flow controller shutting down", error_type="service_unavailable",
                                 code="shutting_down", reason="rejected-shutting-down"))
            return None
        if not self._fits(band, body_size):
            empty = not candidates
            self.recorder.left_queue(request, body_size,
                                     Outcome.REJECTED_NO_ENDPOINTS if empty else Outcome.REJECTED_CAPACITY, 0.0, False)
            proceed(_capacity_error(empty))
            return None
        flow = band.flows.get(request.fairness_id)
        if flow is None:
            flow = band.flows[request.fairness_id] = _Flow(request.fairness_id, band.spec.ordering)
        ttl = self.settings.default_request_ttl
        header = _header_ttl(request.headers)
        if header is not None:
            ttl = min(ttl, header) if ttl > 0 else header  # the header may shorten, never extend, a finite TTL
        self._seq += 1
        entry = _Entry(self, self._seq, request, body_size, now, ttl, proceed, band, flow)
        flow.push(entry)
        band.count += 1
        band.bytes += body_size
        self._count += 1
        self._bytes += body_size
        self.peak_waiting = max(self.peak_waiting, self._count)
        self.peak_bytes = max(self.peak_bytes, self._bytes)
        if ttl > 0:
            heapq.heappush(self._deadlines, (now + ttl, entry.seq, entry))
        self.recorder.enqueued(request, body_size)
        self._pump()
        return None if entry.done else entry

    def released(self, request: LLMRequest, usage: Usage) -> None:
        now = self.clock.now()
        for policy in self._fairness:  # program-aware fairness charges the program for the service it got
            policy.completed(request.fairness_id, usage.prompt_tokens or 0, usage.completion_tokens or 0, now)
        self._pump()

    def tick(self) -> None:
        self._expire()
        self._pump()

    def shutdown(self) -> None:
        """Stop admitting; every queued request is answered 503 ``rejected-shutting-down``."""
        self._shut = True
        for band in self._ordered:
            for flow in list(band.flows.values()):
                for _, entry in list(flow.heap):
                    self._finish(entry, Outcome.EVICTED_OTHER, RequestError(
                        503, "flow controller shutting down", error_type="service_unavailable",
                        code="shutting_down", reason="rejected-shutting-down"))

    # -- internals ------------------------------------------------------------------------------
    def _band(self, priority: int, spec: BandSpec) -> _Band:
        band = self._bands[priority] = _Band(priority, spec)
        self._ordered = sorted(self._bands.values(), key=lambda b: -b.priority)
        self._fairness = list({id(b.spec.fairness): b.spec.fairness for b in self._ordered}.values())
        return band

    def _fits(self, band: _Band, size: int) -> bool:
        s = self.settings
        if s.max_bytes and self._bytes + size > s.max_bytes:
            return False
        if s.max_requests and self._count + 1 > s.max_requests:
            return False
        if band.spec.max_bytes and band.bytes + size > band.spec.max_bytes:
            return False
        return not (band.spec.max_requests and band.count + 1 > band.spec.max_requests)

    def _pump(self) -> None:
        """Dispatch cycles until one dispatches nothing (re-entrant calls fold into the running loop)."""
        if self._pumping:
            return
        self._pumping = True
        try:
            while self._count:
                t0 = perf_counter()
                entry = self._select()
                self.recorder.dispatch_cycle(perf_counter() - t0)
                if entry is None:
                    break
                self._finish(entry, Outcome.DISPATCHED, None)
        finally:
            self._pumping = False

    def _select(self) -> _Entry | None:
        saturation = self.detector.saturation(self.pool())
        self.recorder.saturation(saturation)
        bands = self._ordered
        ceilings = self.settings.usage_limit.ceilings(saturation, len(bands))
        now = self.clock.now()
        for band, ceiling in zip(bands, ceilings):
            if saturation >= ceiling:
                return None  # head-of-line blocking: lower bands never overtake a gated one
            if not band.count:
                continue
            flow = band.spec.fairness.pick(list(band.flows.values()), band.spec.ordering, now, band.state)
            if flow is None:
                continue
            head = flow.head()
            if head is not None:
                return head
        return None

    def _finish(self, entry: _Entry, outcome: Outcome, error: RequestError | None) -> None:
        if entry.done:
            return
        entry.done = True
        band, flow = entry.band, entry.flow
        flow.live -= 1
        band.count -= 1
        band.bytes -= entry.size
        self._count -= 1
        self._bytes -= entry.size
        if flow.live == 0:
            if band.flows.get(flow.flow_id) is flow:
                del band.flows[flow.flow_id]
                band.spec.fairness.forget(flow.flow_id)
        else:
            flow.compact()
        if len(self._deadlines) > 2 * self._count + 64:
            self._deadlines = [d for d in self._deadlines if not d[2].done]
            heapq.heapify(self._deadlines)
        self.recorder.left_queue(entry.request, entry.size, outcome, self.clock.now() - entry.enqueued_at, True)
        if outcome is Outcome.DISPATCHED:
            entry.proceed(None)
        elif error is not None:
            entry.proceed(error)

    def _expire(self) -> None:
        now = self.clock.now()
        empty = not self.pool()
        if empty != self._pool_empty:  # a change of regime starts a fresh budget for everyone queued
            self._pool_empty = empty
            self._regime_since = now
            self._rebudget(now)
        if empty:
            ttl = self.settings.no_endpoint_request_ttl
            if ttl <= 0:
                return
            for band in self._ordered:
                for flow in list(band.flows.values()):
                    for _, entry in list(flow.heap):
                        if not entry.done and now - entry.budget_from >= ttl:
                            self._finish(entry, Outcome.EVICTED_NO_ENDPOINTS, _ttl_error(True))
            return
        deadlines = self._deadlines
        while deadlines and deadlines[0][0] <= now:
            _, _, entry = heapq.heappop(deadlines)
            if not entry.done:
                self._finish(entry, Outcome.EVICTED_TTL, _ttl_error(False))

    def _rebudget(self, now: float) -> None:
        self._deadlines = []
        for band in self._ordered:
            for flow in band.flows.values():
                for _, entry in flow.heap:
                    if entry.done:
                        continue
                    entry.budget_from = now
                    if entry.ttl > 0:
                        self._deadlines.append((now + entry.ttl, entry.seq, entry))
        heapq.heapify(self._deadlines)
