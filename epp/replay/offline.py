"""Offline replay: N simulated engines and the real scheduler, in virtual time.

A discrete-event loop over three kinds of event, in time order:

- an arrival: the request goes through ``epp serve``'s own request path, the ``Director`` (admission
  — shedding sheddable requests when saturated, or flow control's queues —, scheduler, in-flight
  counters, every hook) and, once routed, to its engine; with several picker replicas
  (``epp.replay.replicas``) arrivals go to them in turn, each replica with its own director and
  datastore (same engine snapshots, its own in-flight counters), and the request's later hooks go to
  the replica that picked it;
- an engine's step end: its KV-cache events are published to the scheduler plugins that consume
  them (``epp.replay.kv_feed``, at the step end as vLLM publishes after a step; engines produce
  events only when some plugin consumes them), its outputs are delivered (first tokens → the
  director's ``response_started``, as ``epp serve`` calls it on an endpoint's first response bytes;
  finishes → the director's ``finish``, which releases in-flight counters, runs the response-complete
  hooks and lets flow control dispatch what waits) and the engine starts its next step;
- a disaggregated request (``ClusterSpec.roles``; the picker wrote the prefill header into the
  decision's headers, as for the routing sidecar in ``epp serve``) first runs on its prefill engine
  with ``max_tokens`` 1; when that prefill finishes, the decode engine receives the prompt's KV
  (``EngineCore.receive_kv``) and the request joins it. The director sees only the decode request, as
  in ``epp serve`` where the sidecar runs the prefill: its first token and finish come from the decode
  engine. The KV transfer itself takes no time here (an optimistic bound: NIXL over RDMA moves a long
  prompt's KV in milliseconds, over TCP it can take far longer). With roles, steps are not fused: a
  decode request can join an engine at any prefill's end, not only at an arrival;
- a metrics poll every ``poll_interval`` seconds: each engine's ``EngineStats`` becomes the same
  ``EndpointMetrics`` snapshot the metrics poller builds from ``/metrics``, so the scheduler sees
  state exactly as stale as in production; then each director's admission ``tick`` (queue deadlines,
  dispatch on the fresh metrics);
- with shared state (``--shared-state``), an exchange every ``VirtualExchange.period``: the replicas
  read each other's exports of the previous exchange and publish their own (``epp.shared.virtual``),
  taken lazily like polls.

Each request carries both its token ids (what token-aware plugins hash, e.g. the prefix scorer) and
the text those ids decode to with the simulator's tokenizer (what text-based plugins see, e.g. the
SGLang radix tree), as a client sending text to ``epp serve`` would.

Polls are taken lazily: no event happens between a tick and the next event, so a snapshot taken when
that event is processed is the state at the tick. Engine steps are given the next arrival as their
horizon, so runs of pure decode are fused into one event (``EngineCore.step``): an engine's state
can therefore run ahead of a poll tick by at most the fused run, never past the next arrival, the only
moment anyone reads it. For the same reason a fused run's KV events are published together at its end.
With flow control a held request can also be dispatched at a poll or when another request finishes, so
the horizon is then the next poll as well: a dispatched request waits behind a fused run for at most one
poll interval.
"""

from __future__ import annotations

import heapq
from itertools import groupby
import math
import random
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from functools import partial

from epp._util.clock import VirtualClock
from epp.datastore import Datastore, Endpoint, EndpointMetrics, EndpointState
from epp.datastore.endpoint import ROLE_LABEL
from epp.director import AdmissionPolicy, Director, Failure, RoutingDecision, ShedSheddable
from epp.engine.block_pool import KVCacheEvent
from epp.engine.config import PROFILES, EngineConfig
from epp.engine.core import EngineCore, EngineStats, RequestOutput
from epp.engine.request import EngineRequest
from epp._util.byte_tokenizer import decode
from epp.contracts.datalayer import kv_event_views
from epp.replay.kv_feed import KVEventFeed
from epp.replay.traces.model import TraceRequest
from epp.request import LLMRequest, RequestError, RequestKind
from epp.request.usage import Usage
from epp.scheduling import Scheduler
from epp.request.headers import prefill_target
from epp.shared import VirtualExchange

POLL_INTERVAL = 0.05
"""The metrics poller's default refresh interval, in seconds."""


@dataclass(frozen=True, slots=True)
class ClusterSpec:
    """The simulated cluster: ``engines`` engines built from ``engine``, engine ``i`` on ``profiles[i]``
    when given (a mixed pool; the policy is never told which), else all on ``engine.profile``; ``roles``
    (one per engine: prefill, decode, both) label them ``llm-d.ai/role``, empty for an aggregated pool."""

    engines: int = 8
    engine: EngineConfig = field(default_factory=EngineConfig)
    poll_interval: float = POLL_INTERVAL
    staleness_threshold: float = 2.0
    profiles: tuple[str, ...] = ()
    roles: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.profiles and len(self.profiles) != self.engines:
            raise ValueError(f"{len(self.profiles)} engine profiles for {self.engines} engines")
        if self.roles and len(self.roles) != self.engines:
            raise ValueError(f"{len(self.roles)} roles for {self.engines} engines")

    def engine_config(self, i: int) -> EngineConfig:
        """Engine ``i``'s configuration (its own seed, its profile)."""
        profile = self.profiles[i] if self.profiles else self.engine.profile
        return replace(self.engine, profile=profile, seed=self.engine.seed + i)

    def kv_tokens(self) -> int:
        """The whole cluster's KV cache in tokens."""
        return sum(c.total_gpu_blocks * c.block_size for c in map(self.engine_config, range(self.engines)))

    @property
    def label(self) -> str:
        """``8 × p`` or ``4 × p + 4 × q`` (in engine order)."""
        profiles = self.profiles or (self.engine.profile,) * self.engines
        return " + ".join(f"{len(list(run))} × {profile}" for profile, run in groupby(profiles))


def parse_profiles(text: str, engines: int) -> tuple[str, ...]:
    """``--profile``: one profile for every engine, or a mix ``p:4,q:4`` (counts summing to ``engines``,
    engines assigned in that order); per engine, ValueError naming what is wrong."""
    if ":" not in text and "," not in text:
        names = [text] * engines
    else:
        names = []
        for part in text.split(","):
            profile, sep, count = part.strip().partition(":")
            if not sep or not count.strip().isdigit() or int(count) < 1:
                raise ValueError(f"--profile {text!r}: each part must be profile:count, got {part!r}")
            names += [profile.strip()] * int(count)
        if len(names) != engines:
            raise ValueError(f"--profile {text!r}: counts sum to {len(names)}, not to --engines {engines}")
    for name in dict.fromkeys(names):
        if name not in PROFILES:
            raise ValueError(f"unknown profile {name!r}; known: {', '.join(PROFILES)}")
    return tuple(names)


@dataclass(slots=True)
class RequestRecord:
    """What happened to one trace request; times in virtual seconds from the trace start."""

    arrival: float
    prompt_tokens: int
    priority: int = 0
    routed: float | None = None
    """When the picker let the request go to its engine (later than ``arrival`` if flow control held it)."""
    engine: int = -1
    cached_tokens: int = 0
    output_tokens: int = 0
    first_token: float | None = None
    finish: float | None = None
    shed: str | None = None
    """Why the request never reached an engine (the picker's refusal, or the engine's)."""
    prefill_engine: int = -1
    """The engine that ran the prefill of a disaggregated request (-1: aggregated); its prefix hit is
    ``cached_tokens`` (the decode engine's hit is the KV it received)."""


@dataclass(slots=True)
class LoadSample:
    """Requests each engine holds (running + waiting) at one poll."""

    time: float
    per_engine: tuple[int, ...]


@dataclass(slots=True)
class RunResult:
    """A run's per-request records, per-engine load samples and requests dispatched to each engine."""

    records: list[RequestRecord]
    load: list[LoadSample]
    dispatched: tuple[int, ...]
    wall_s: float
    kv_event_batches: int | None = None
    """KV-event batches delivered to the scheduler (0: no plugin consumes them; None: not known)."""
    busy: tuple[float, ...] = ()
    """Per engine, the seconds it spent stepping (the GPU time its steps reported): what it worked, in its
    own speed. Measured by the replay from the engines, never shown to a policy; empty when not known
    (live replay sees only HTTP)."""

    @property
    def engines(self) -> int:
        return len(self.dispatched)


@dataclass(slots=True)
class _InFlight:
    index: int
    decision: RoutingDecision
    replica: int
    decode: int = -1
    """For a prefill in flight: the engine its decode goes to."""


Admission = Callable[[Scheduler, Datastore], AdmissionPolicy]
"""Builds one replica's admission policy (as ``epp serve`` does from its config)."""


class ReplayRecorder:
    """The director's ``RequestRecorder`` offline: requests routed and refused, per priority band
    (the replay summary reads latencies from the run's records; this is what the picker saw)."""

    def __init__(self) -> None:
        self.routed: Counter[int] = Counter()
        self.rejected: Counter[tuple[int, str]] = Counter()

    def scheduled(self, duration: float, target_model: str, endpoint: EndpointState | None) -> None:
        pass

    def request_routed(self, request: LLMRequest, body_bytes: int) -> None:
        self.routed[request.priority] += 1

    def request_rejected(self, model: str, target_model: str, error: RequestError,
                         request: LLMRequest | None = None) -> None:
        self.rejected[(request.priority if request is not None else 0, reason(error))] += 1

    def request_finished(self, request: LLMRequest, duration: float, response_bytes: int | None, usage: Usage) -> None:
        pass

    def model_rewritten(self, rewrite_name: str, model: str, target_model: str) -> None:
        pass


def reason(error: RequestError) -> str:
    """A refusal as a record's ``shed`` value: the dropped-reason, else the error code, else the status."""
    return error.reason or error.code or str(error.status)


def snapshot(stats: EngineStats, scraped_at: float, models: frozenset[str]) -> EndpointMetrics:
    """The metrics poller's view of an engine: vLLM gauges mapped to engine-neutral fields."""
    return EndpointMetrics(
        scraped_at=scraped_at,
        waiting=stats.num_waiting,
        running=stats.num_running,
        kv_usage=stats.kv_usage,
        active_loras=stats.running_loras,
        waiting_loras=stats.waiting_loras,
        max_lora=stats.max_loras,
        block_size=stats.block_size,
        num_gpu_blocks=stats.num_gpu_blocks,
        models=models,
    )


class OfflineReplay:
    """One policy on one cluster over one trace. ``run()`` once; the result is deterministic for
    deterministic schedulers. ``schedulers`` are the picker replicas (one for a single epp), built on
    ``clock`` (at 0)."""

    def __init__(
        self,
        requests: Sequence[TraceRequest],
        schedulers: Sequence[Scheduler],
        cluster: ClusterSpec,
        clock: VirtualClock,
        rate_scale: float = 1.0,
        load_samples: int = 400,
        progress: Callable[[int], None] | None = None,
        admission: Admission | None = None,
        exchange: VirtualExchange | None = None,
    ) -> None:
        """``admission`` builds each replica's admission policy (default: ``epp serve``'s, shedding
        sheddable requests while the scheduler's saturation detector says the pool is saturated);
        ``exchange`` moves the replicas' shared state."""
        if rate_scale <= 0:
            raise ValueError("rate scale must be positive")
        if not schedulers:
            raise ValueError("need at least one scheduler")
        self.requests = requests
        self.schedulers = list(schedulers)
        self.cluster = cluster
        self.arrivals = [r.arrival / rate_scale for r in requests]
        self.clock = clock
        self.endpoints = [
            Endpoint(f"engine-{i}", f"10.0.0.{i + 1}", 8000, labels={ROLE_LABEL: cluster.roles[i]} if cluster.roles else {})
            for i in range(cluster.engines)
        ]
        self._index = {endpoint.name: i for i, endpoint in enumerate(self.endpoints)}
        self._by_hostport = {endpoint.hostport: i for i, endpoint in enumerate(self.endpoints)}
        self._fuse = not cluster.roles
        self.datastores = [Datastore(self.clock, cluster.staleness_threshold) for _ in self.schedulers]
        for datastore in self.datastores:
            for endpoint in self.endpoints:
                datastore.upsert(endpoint)
            datastore.mark_synced()
        self.recorders = [ReplayRecorder() for _ in self.schedulers]
        self.directors = [
            Director(datastore, scheduler, recorder, admission=admission(scheduler, datastore) if admission else None,
                     clock=clock, rng=random.Random(i))
            for i, (datastore, scheduler, recorder) in enumerate(zip(self.datastores, self.schedulers, self.recorders))
        ]
        sinks = kv_event_views(s.data_needs for s in self.schedulers)
        self.kv_feed = KVEventFeed(sinks, self.endpoints, cluster.engine.model) if sinks else None
        self.engines = [
            EngineCore(replace(cluster.engine_config(i), enable_kv_events=bool(sinks))) for i in range(cluster.engines)
        ]
        self.models = frozenset({cluster.engine.model})
        self.records = [RequestRecord(a, r.prompt.length, r.priority) for a, r in zip(self.arrivals, requests)]
        self.load: list[LoadSample] = []
        span = self.arrivals[-1] if self.arrivals else 0.0
        self._sample_every = span / load_samples if load_samples else math.inf
        self._next_sample = 0.0
        self._progress = progress
        self._inflight: dict[str, _InFlight] = {}
        self._pending: list[list[RequestOutput] | None] = [None] * cluster.engines
        self._pending_events: list[list[KVCacheEvent]] = [[] for _ in range(cluster.engines)]
        # each engine's stats as of its last change (None: changed since), so idle engines cost nothing
        self._stats: list[EngineStats | None] = [None] * cluster.engines
        self._heap: list[tuple[float, int]] = []
        self._busy = [0.0] * cluster.engines  # seconds each engine spent stepping (RunResult.busy)
        self._horizon = math.inf  # the next moment a request may arrive at an engine
        # an admission policy that holds requests (flow control) may dispatch one at any poll
        self._queues = any(not isinstance(d.admission, ShedSheddable) for d in self.directors)
        self._delivering = -1  # the engine whose outputs are being delivered (stepped right after)
        self.exchange = exchange

    def run(self) -> RunResult:
        started = time.perf_counter()
        arrivals = self.arrivals
        heap = self._heap
        n = len(arrivals)
        i = 0
        next_poll = 0.0
        interval = self.cluster.poll_interval
        exchange = self.exchange
        next_share = 0.0 if exchange is not None else math.inf
        while i < n or heap or (self._queues and self._waiting()):
            t_arrival = arrivals[i] if i < n else math.inf
            t_engine = heap[0][0] if heap else math.inf
            t = min(t_arrival, t_engine)
            if t == math.inf:  # only held requests remain: the next poll may dispatch or expire them
                t = next_poll
            if exchange is not None:
                exchange.deliver(t)  # the events replicas sent each other by now (bookings, first tokens)
            if t >= next_share and exchange is not None:  # lazily, as polls: nothing changed since the tick
                share = max(next_share, math.floor(t / exchange.period) * exchange.period)
                exchange.tick(share)
                next_share = share + exchange.period
            if t >= next_poll:
                # never below next_poll, never past t (53.9 s floors to 1078 polls × 0.05 = 53.900000000000006)
                tick = max(next_poll, min(t, math.floor(t / interval) * interval))
                self._poll(tick)
                next_poll = tick + interval
                if heap and heap[0][0] < t:  # flow control dispatched at the tick: that engine's step comes first
                    continue
            self.clock.advance_to(t)
            if t_engine <= t_arrival and heap:
                self._horizon = min(t_arrival, next_poll) if self._queues else t_arrival
                _, e = heapq.heappop(heap)
                self._deliver(e)
                self._step(e, t, self._horizon)
            elif i < n:
                t_next = arrivals[i + 1] if i + 1 < n else math.inf
                self._horizon = min(t_next, next_poll) if self._queues else t_next
                self._arrive(i, t)
                i += 1
                if self._progress is not None and (i % 256 == 0 or i == n):
                    self._progress(i)
        dispatched = [0] * len(self.engines)
        for record in self.records:
            if record.engine >= 0:
                dispatched[record.engine] += 1
        batches = self.kv_feed.batches if self.kv_feed is not None else 0
        return RunResult(self.records, self.load, tuple(dispatched), time.perf_counter() - started, batches,
                         tuple(self._busy))

    # -- events ------------------------------------------------------------------------------------

    def _waiting(self) -> bool:
        return any(d.admission.waiting for d in self.directors)

    def _poll(self, tick: float) -> None:
        loads = []
        cached = self._stats
        for e, (endpoint, engine) in enumerate(zip(self.endpoints, self.engines)):
            stats = cached[e]
            if stats is None:
                stats = cached[e] = engine.stats()
            metrics = snapshot(stats, tick, self.models)
            for datastore in self.datastores:
                datastore.update_metrics(endpoint.name, metrics)
            loads.append(stats.num_running + stats.num_waiting)
        if tick >= self._next_sample:
            self.load.append(LoadSample(tick, tuple(loads)))
            self._next_sample = tick + self._sample_every
        self.clock.advance_to(max(tick, self.clock.now()))
        for director in self.directors:
            director.admission.tick()

    def _arrive(self, index: int, now: float) -> None:
        trace_request = self.requests[index]
        tokens = trace_request.prompt.tokens()
        prompt = decode(tokens).encode()
        request = LLMRequest(
            request_id=str(index),
            kind=RequestKind.COMPLETIONS,
            model=trace_request.model or self.cluster.engine.model,
            prompt_bytes=prompt,
            prompt_token_ids=tokens,
            max_tokens=trace_request.output_tokens,
            stream=True,  # first tokens are delivered as they happen, as a streamed response's are
            user=trace_request.session,
            priority=trace_request.priority,
        )
        replica = index % len(self.directors)
        self.directors[replica].submit(request, len(prompt), None, partial(self._routed, index, replica, request))

    def _routed(self, index: int, replica: int, request: LLMRequest, outcome: RoutingDecision | RequestError) -> None:
        """The director's answer for one request, now or when flow control dispatched it."""
        record = self.records[index]
        director = self.directors[replica]
        if isinstance(outcome, RequestError):
            record.shed = reason(outcome)
            director.reject(outcome, request.request_id, "/v1/completions", request)
            return
        now = record.routed = self.clock.now()
        e = self._index[outcome.endpoints[0].name]
        prefill = prefill_target("decode", outcome.answer().headers)  # what the engine would be sent
        p = self._by_hostport.get(prefill, -1) if prefill is not None else -1
        tokens = request.prompt_token_ids or []
        try:
            if p >= 0:
                self.engines[p].add_request(EngineRequest(f"{request.request_id}/prefill", tokens, 1, now))
            else:
                self.engines[e].add_request(EngineRequest(request.request_id, tokens, request.max_tokens or 0, now))
        except ValueError as exc:
            record.shed = f"engine refused: {exc}"
            # ``epp sim`` answers an engine refusal 400 (sim/server.py): a failure the endpoint is not blamed for
            director.finish(outcome, failure=Failure("http-400", endpoint_fault=False))
            return
        record.engine = e
        if p >= 0:
            record.prefill_engine = p
            self._inflight[f"{request.request_id}/prefill"] = _InFlight(index, outcome, replica, decode=e)
            self._wake(p, now)
        else:
            self._inflight[request.request_id] = _InFlight(index, outcome, replica)
            self._wake(e, now)

    def _wake(self, e: int, now: float) -> None:
        """Engine ``e`` got a request: its state changed, and if it was idle it starts a step now."""
        self._stats[e] = None
        if self._pending[e] is None and e != self._delivering:  # the one delivering steps right after
            self._step(e, now, self._horizon)

    def _prefilled(self, flight: _InFlight, now: float) -> None:
        """A disaggregated request's prefill finished: its KV moves to the decode engine, which takes it."""
        request = flight.decision.request
        tokens = request.prompt_token_ids or []
        decode = self.engines[flight.decode]
        decode.receive_kv(tokens)
        try:
            decode.add_request(EngineRequest(request.request_id, tokens, request.max_tokens or 0, now))
        except ValueError as exc:  # cannot happen for a prompt the prefill engine took (same config); kept honest
            self.records[flight.index].shed = f"engine refused: {exc}"
            self.directors[flight.replica].finish(flight.decision, failure=Failure("http-400", endpoint_fault=False))
            return
        self._inflight[request.request_id] = _InFlight(flight.index, flight.decision, flight.replica)
        self._wake(flight.decode, now)

    def _step(self, e: int, now: float, horizon: float) -> None:
        """Start engine ``e``'s next iteration at ``now``; an idle engine waits for its next request."""
        engine = self.engines[e]
        out = engine.step(now, horizon if self._fuse else None)
        self._stats[e] = None
        if self.kv_feed is not None:
            self._pending_events[e] = engine.take_kv_events()
        if out.duration > 0:
            self._busy[e] += out.duration
            self._pending[e] = out.outputs
            heapq.heappush(self._heap, (now + out.duration, e))
        else:
            self._pending[e] = None
            self._publish(e, now)

    def _publish(self, e: int, now: float) -> None:
        """Engine ``e``'s last step's KV events, published when that step ends."""
        events = self._pending_events[e]
        if self.kv_feed is not None and events:
            self._pending_events[e] = []
            self.kv_feed.publish(self.endpoints[e].name, now, events)

    def _deliver(self, e: int) -> None:
        self._publish(e, self.clock.now())
        outputs = self._pending[e] or []
        self._pending[e] = None
        self._delivering = e
        try:
            self._deliver_outputs(outputs)
        finally:
            self._delivering = -1

    def _deliver_outputs(self, outputs: list[RequestOutput]) -> None:
        for out in outputs:
            flight = self._inflight.get(out.request_id)
            if flight is None:
                continue
            record = self.records[flight.index]
            if flight.decode >= 0:  # the prefill half of a disaggregated request: the director never sees it
                record.cached_tokens = out.num_cached_tokens
                if out.finished:
                    del self._inflight[out.request_id]
                    self._prefilled(flight, self.clock.now())
                continue
            director = self.directors[flight.replica]
            if out.first_token:
                record.first_token = out.first_token_time
                if record.prefill_engine < 0:
                    record.cached_tokens = out.num_cached_tokens
                director.response_started(flight.decision)
            if out.finished:
                record.finish = out.finish_time
                record.output_tokens = out.num_output_tokens
                del self._inflight[out.request_id]
                director.finish(flight.decision, Usage(out.num_prompt_tokens, out.num_output_tokens, out.num_cached_tokens))
