"""``ttft-predictor-scorer``: prefer the endpoint with the smallest predicted time to first token.

Cost = predicted TTFT + λ · predicted prefill, score = ``best / cost`` (1 for the cheapest endpoint, in
(0, 1] for the rest), with costs rounded up to ``tieTolerance`` first so endpoints within it tie exactly
and ``max-score-picker`` breaks the tie at random — an idle pool spreads a burst instead of piling it
onto one endpoint, and each pick is booked at once (PreRequest), so the next request of the burst
already sees it. λ = ``workWeight`` × (1 + mean queue in requests over the candidates): a cache miss
costs later requests the prefill it adds, and more so the more requests queue — under overload the
throughput cache hits buy matters more than which queue is shortest (λ = 0 with ``workWeight`` 0: pure
TTFT). What λ multiplies is the prefill work a choice adds (``workCharge``, ``_scores``): by default the
prefill a miss adds and the prefix it strands in full, and the rest of the prompt's prefill — what any
endpoint pays — only up to 1.25× the least any candidate pays, so that on a pool of unequal engines λ
does not turn a slow engine's speed into a charge its TTFT already carries.

Costs within ``tieRelative`` (5 %) ÷ (1 + 4 × mean queue, ``TIE_QUEUE_WEIGHT``) of the cheapest also tie
with it. A prefix every request shares (a system prompt) otherwise locks a light pool onto the endpoints
that happened to get the first few requests: each holds it, so on each of them a new conversation saves
its prefill and the work charge on it (on 8 × 1B conversation at ×1, 512 tokens: ~17 ms of cost on a
~230 ms prompt), and an endpoint that never got a request never gets it, nor any request (1B, 500
requests: 2–4 of 8 engines served nothing, imbalance 1.7–2.6; 2,000 requests: hit 0.93× the capacity
bound, the caches of five engines holding eight engines' conversations). Which endpoints got in was
decided by chance in the first seconds (and by any bias in the learned latency: decode steps learned too
slow made busy engines look dearer and spread the first requests, bench/RESULTS.md "Light-load
lock-out"). Within 5 % a warm endpoint is no better than a cold one by more than prediction noise, and a
conversation's own turns (most of the prompt cached) stay far outside it; the tie shrinks as queues
grow, where the ranking is what TTFT depends on. The learner is not the cause: its estimates were within
5 % of the engines' and equal across endpoints.

The prediction (``epp.scheduling.ttft``) uses each endpoint's latency as learned online from its own
requests (``LatencyLearner``: recursive least squares with forgetting on the first tokens and
inter-token times of requests that succeeded; no GPU, model or profile is assumed), the prefix
producer's per-cycle match (``prefixMatchInfoProducerName``, else the
configured prefix producer — approximate or ``precise-prefix-cache-producer`` —, else one this scorer
creates matching up to 128K tokens: a prediction needs the whole hit, not GIE's 4K-token default), the
last scrape, and this plugin's own
ledger of requests in flight per endpoint. The ledger follows the scheduler hooks: PreRequest books
the request with its predicted prefill on the chosen endpoint, ResponseStarted (first response bytes
≈ first token) moves it from prefill to decode, ResponseComplete releases it; requests older than
``requestTimeout`` are forgotten.

Parameters: ``blockSize`` 16, ``maxNumBatchedTokens`` 8192 (the engines' vLLM settings: KV block and
prefill chunk size), ``kvCapacityTokens`` 500000 (assumed for an engine that reports no KV cache
size), ``forgettingFactor`` 0.99 (the learner's memory: about the last 1 / (1 − λ) requests per
endpoint), ``evidenceHalfLife`` 16 (rounds of the pool — one observation per endpoint each —
after which an endpoint's own evidence not renewed fades towards the pool's, halving every as many
rounds; 0: never), ``defaultOutputTokens`` 256 (assumed when a request sets no ``max_tokens``), ``workWeight`` 0,
``workCharge`` capped, ``tieTolerance`` 2ms, ``tieRelative`` 0.05, ``requestTimeout`` 10m, ``prefixMatchInfoProducerName``, ``estimateEviction``
(discount released prefixes by the KV written since, ``PrefixRecency``; default: per endpoint, wherever
the producer's view is not exact (``view_is_exact``) — always with the approximate producer, with a
precise one only for endpoints whose KV-event feed is not live and which are matched in its fallback).

All candidates are predicted at once (``BatchPredictor``: one compiled loop over endpoints, identical to
``TTFTPredictor.predict`` per endpoint), and scored by another (``_scores``; numba, ``epp._util.jit``).

Active-active replicas share their ledgers and learned latency (``export_shared`` / ``import_shared``,
moved between replicas by ``epp.shared`` every few tens of milliseconds, never on the pick path): each
replica predicts with its own requests exactly and the others' as they last reported them, and with
the latency learned by the replica that has seen most of an endpoint while it has seen little itself.
Bookings, first tokens and latency observations also go to the other replicas as they happen
(``take_events`` / ``import_events``, about a millisecond): replicas picking faster than the exchange
period otherwise send work to the same idle endpoint unaware of each other, and each learns from every
request an endpoint serves, timing only its own requests' prefill. Each export first learns what is final
(``EndpointLearner.flush``: the others hear its prefill intervals within a round), and each import tells
the learners how far the others' intervals are all heard (the oldest peer export's time), so an ended
stream's decode step waits for the peers' prefills that overlap it (``EndpointLearner.peers_heard``).
"""

from __future__ import annotations

import math
import operator
import secrets
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import astuple, dataclass, field, fields
from itertools import compress
from typing import Any

import numpy as np

from epp._util.clock import Clock
from epp._util.jit import compiled
from epp.datastore import Endpoint, EndpointMetrics, EndpointState
from epp.request import LLMRequest
from epp.plugin.typed_name import TypedName
from epp.scheduling.framework import CycleState, SchedulingResult
from epp.plugin.params import Duration, ParamError, decode_params
from epp.scheduling.prefix.producer import APPROX_PREFIX_CACHE_PRODUCER, ApproxPrefixCacheProducer, PrefixIndexParams
from epp.plugin.registry import PluginHandle
from epp.scheduling.ttft import (
    BatchPredictor,
    EndpointLedger,
    Flight,
    LatencyEstimate,
    LatencyLearner,
    Prediction,
    Predictions,
    PrefixRecency,
    TTFTPredictor,
)
from epp.scheduling.ttft.batch import Floats, Ints
from epp.scheduling.ttft.learn import DECODE, EVIDENCE_HALF_LIFE, MERGE_GAP, PREFILL
from epp.scheduling.ttft.ledger import NO_REMOTE, RemoteLoad, queue_end

TTFT_PREDICTOR_SCORER = "ttft-predictor-scorer"
MATCH_TOKENS = 131072
"""Prompt tokens the scorer's own prefix producer matches (when none is configured)."""
_OLDEST = operator.attrgetter("oldest")
MIN_SECONDS = 1e-12
"""Floor of a cold prefill divided by (learned coefficients may all be 0)."""
COLD_MEAN_WEIGHT = 1 / 32
"""Weight of each pick in ``typical_cold_seconds`` (an exponential moving mean over ~32 picks)."""
CHARGE_CAPPED = "capped"
CHARGE_MISS = "miss"
CHARGE_PREFILL = "prefill"
WORK_CHARGES = (CHARGE_CAPPED, CHARGE_MISS, CHARGE_PREFILL)
"""``workCharge``: what λ multiplies (see the module docstring)."""
BASE_CAP = 1.25
"""``workCharge: capped``: the prefill an endpoint pays whatever the hit is charged up to this × the least
any candidate pays. Differences between endpoints of one kind (learned noise, and the decode load that
slows a busy engine's prefill) mostly stay under it and are charged as before; another kind's speed (an
8B's 5.4× a 1B's) is not. Measured (bench/RESULTS.md, branch ``mixfloor``, TTFT p90 pooled over ±2 % of
the knee): 1.1 lost 6 % on 8 × 8B conversation (1.210 vs 1.143 s), 1.25 0.9 %, 1.5 none; on the 4 + 4
synthetic mix learned 1.323 / 1.335 / 1.342 s (the old charge 1.482), and with estimates pinned to the
engines 1.164 / 1.260 / 1.477 s."""


TIE_QUEUE_WEIGHT = 4.0
"""``tieRelative`` is divided by 1 + this × the mean queue (requests per candidate): a fifth of it by one
queued request per endpoint. The lock-out it breaks is a light-load one; under load the ranking is what
TTFT depends on. Measured on the 4 + 4 synthetic knee, p90 at ×0.98–×1.02 averaged, seeds 0 / 1: 1.165 /
1.210 s without the tie, 1.246 / 1.207 with it divided by 1 + the mean queue, 1.131 / 1.110 by 1 + 4 × it
(bench/RESULTS.md, "Light-load lock-out")."""


@dataclass(frozen=True, slots=True)
class TTFTPredictorParams:
    block_size: int = 16
    max_num_batched_tokens: int = 8192
    kv_capacity_tokens: int = 500_000
    forgetting_factor: float = 0.99
    evidence_half_life: float = EVIDENCE_HALF_LIFE
    default_output_tokens: int = 256
    tie_tolerance: Duration = Duration(0.002)
    tie_relative: float = 0.05
    work_weight: float = 0.0
    request_timeout: Duration = Duration(600.0)
    prefix_match_info_producer_name: str | None = None
    estimate_eviction: bool | None = None
    work_charge: str = CHARGE_CAPPED

    def __post_init__(self) -> None:
        for key, value in (
            ("blockSize", self.block_size), ("maxNumBatchedTokens", self.max_num_batched_tokens),
            ("defaultOutputTokens", self.default_output_tokens), ("kvCapacityTokens", self.kv_capacity_tokens),
        ):
            if value < 1:
                raise ParamError(key, "must be at least 1")
        if not 0.5 <= self.forgetting_factor <= 1.0:
            raise ParamError("forgettingFactor", "must be in [0.5, 1]")
        if self.evidence_half_life < 0:
            raise ParamError("evidenceHalfLife", "must not be negative (0: never fades)")
        if self.work_weight < 0:
            raise ParamError("workWeight", "must not be negative")
        if self.tie_tolerance <= 0:
            raise ParamError("tieTolerance", "must be positive")
        if not 0.0 <= self.tie_relative < 1.0:
            raise ParamError("tieRelative", "must be in [0, 1)")
        if self.request_timeout <= 0:
            raise ParamError("requestTimeout", "must be positive")
        if self.work_charge not in WORK_CHARGES:
            raise ParamError("workCharge", f"must be one of {', '.join(WORK_CHARGES)}")


class TTFTPredictorScorer:
    def __init__(
        self, producer: ApproxPrefixCacheProducer, clock: Clock, name: str = TTFT_PREDICTOR_SCORER,
        params: TTFTPredictorParams | None = None,
    ) -> None:
        self.typed_name = TypedName(TTFT_PREDICTOR_SCORER, name)
        self.params = p = params or TTFTPredictorParams()
        self.producer = producer
        self.clock = clock
        self.learner = LatencyLearner(p.max_num_batched_tokens, p.forgetting_factor, p.evidence_half_life)
        self.predictor = BatchPredictor(
            TTFTPredictor(self.learner, p.block_size, p.default_output_tokens, p.kv_capacity_tokens)
        )
        self.estimate_eviction = p.estimate_eviction
        """True/False: always/never; None (auto): for endpoints whose prefix view is not exact."""
        self.ledgers: dict[str, EndpointLedger] = {}
        self.recency: dict[str, PrefixRecency] = {}
        self._scores = compiled(_scores, _SCORES_SIGNATURE)
        self._tolerance = float(p.tie_tolerance)
        self._charge = WORK_CHARGES.index(p.work_charge)
        self.typical_cold_seconds = 0.0
        """Moving mean of the cold prefill of this scorer's picks: what a foreign request is assumed to cost."""
        self._picks = 0
        self._key = f"ttft/{name}"
        self._scrapes_seen: list[EndpointMetrics | None] = []
        self._last_candidates: list[EndpointState] = []
        self._last_names: list[str] = []
        self._last_ledgers: list[EndpointLedger] = []
        producer.tail_learned.append(self._tail_learned)
        self.on_event: Callable[[], None] | None = None
        """Set by a shared-state exchange (``epp.shared.SharesEvents``): bookings and first tokens are then
        queued for the other replicas as they happen."""
        self.origin = secrets.token_hex(6)
        """Names this replica's exports and events to the others (which events an export already holds)."""
        self._sequence = 0
        self._outbox: list[tuple[int, str, str, float, tuple[float, ...]]] = []
        self._heard: dict[str, _Heard] = {}
        self._booking_ids: dict[str, int] = {}
        """Request id → the sequence number of its booking event, while it has no first token."""
        self.learner.report = self._report

    def _tail_learned(self, request_id: str, endpoints: list[str], hashes: list[int]) -> None:
        """A prompt hashed lazily at the pick is known whole now: its held prefix is all of it."""
        for name in endpoints:
            recency = self.recency.get(name)
            if recency is not None:
                recency.extend(request_id, hashes)

    def _ledger(self, name: str) -> EndpointLedger:
        ledger = self.ledgers.get(name)
        if ledger is None:
            ledger = self.ledgers[name] = EndpointLedger()
        return ledger

    def _recency(self, name: str) -> PrefixRecency:
        recency = self.recency.get(name)
        if recency is None:
            recency = self.recency[name] = PrefixRecency()
        return recency

    def estimates_eviction(self, name: str) -> bool:
        if self.estimate_eviction is None:
            return not self.producer.view_is_exact(name)  # an exact view already dropped evicted blocks
        return self.estimate_eviction

    def predictions(
        self, cycle: CycleState, request: LLMRequest, endpoints: list[EndpointState]
    ) -> tuple[Predictions, list[EndpointLedger]]:
        """Per endpoint (aligned), the predicted TTFT, and the endpoints' ledgers; the predictions are
        also kept in ``cycle`` for the PreRequest hook."""
        info, hits = self.producer.match(cycle, request, endpoints)
        now = self.clock.now()
        cutoff = now - self.params.request_timeout
        names, ledgers = self._candidates(endpoints)
        self.observe_scrapes(endpoints, ledgers)
        if min(map(_OLDEST, ledgers), default=cutoff) < cutoff:
            self._expire([(n, ledger) for n, ledger in zip(names, ledgers) if ledger.oldest < cutoff], cutoff)
        since: dict[int, int] = {}
        for i in compress(range(len(hits)), hits):  # the matched ones
            recency = self.recency.get(names[i])
            if recency is not None and self.estimates_eviction(names[i]):
                written = recency.written_since(info.hashes, hits[i])
                if written:
                    since[i] = written
        prompt = request.estimated_prompt_tokens
        block = info.block_tokens
        predictions = self.predictor.predict(names, endpoints, ledgers, prompt, hits, since, now, block,
                                             self._scrapes_seen)
        cycle.setdefault(self._key, []).append((names, predictions))
        return predictions, ledgers

    def _candidates(self, endpoints: list[EndpointState]) -> tuple[list[str], list[EndpointLedger]]:
        """The candidates' names and ledgers (aligned), kept while the same endpoint states are asked
        about again (the common case: one identity pass instead of a name and ledger lookup each)."""
        last = self._last_candidates
        if len(endpoints) == len(last) and all(map(operator.is_, endpoints, last)):
            return self._last_names, self._last_ledgers
        names = [e.endpoint.name for e in endpoints]
        ledgers = [self._ledger(name) for name in names]
        self._last_candidates, self._last_names, self._last_ledgers = list(endpoints), names, ledgers
        return names, ledgers

    def _expire(self, expiring: list[tuple[str, EndpointLedger]], cutoff: float) -> None:
        """Forget the requests routed before ``cutoff`` on these endpoints: no outcome, nothing learnt."""
        for name, ledger in expiring:
            recency = self.recency.get(name)
            learner = self.learner[name]
            for request_id in ledger.expire(cutoff):
                self._booking_ids.pop(request_id, None)
                learner.forget(request_id)  # no outcome: it teaches nothing
                if recency is not None:
                    recency.release(request_id)

    def observe_scrapes(self, endpoints: list[EndpointState], ledgers: list[EndpointLedger]) -> None:
        """Hand each fresh scrape to its endpoint's ledger (aligned), which books the work other routers
        sent there since the previous one (``EndpointLedger.observe_scrape``). Between scrapes every
        candidate's metrics object is the one the previous pick saw: one identity pass, no ledger call.
        ``_scrapes_seen`` is then that list (the same object while nothing changed), which the predictor
        reuses to tell which cached rows a scrape made stale."""
        metrics = [None if state.stale else state.metrics for state in endpoints]
        seen = self._scrapes_seen
        if len(metrics) == len(seen) and all(map(operator.is_, metrics, seen)):
            return
        self._scrapes_seen = metrics
        typical = self.typical_cold_seconds
        for state, ledger in zip(endpoints, ledgers):
            m = state.metrics
            if m is not None and not state.stale:
                ledger.observe_scrape(m.scraped_at, m.running + m.waiting, typical)

    def predict(self, cycle: CycleState, request: LLMRequest, endpoints: list[EndpointState]) -> list[Prediction]:
        """``predictions`` as one ``Prediction`` per endpoint."""
        predictions, _ = self.predictions(cycle, request, endpoints)
        return [predictions[i] for i in range(len(predictions))]

    def work_weight(self, endpoints: list[EndpointState], now: float) -> float:
        """λ = ``workWeight`` × (1 + mean queue in requests over ``endpoints``): about how many later
        requests the prefill work a choice adds will delay (see the module docstring)."""
        ledgers = [self._ledger(e.name) for e in endpoints]
        return self._weight(sum(ledger.queued(now) for ledger in ledgers) + self._queued_elsewhere(ledgers, now),
                            len(endpoints))  # fmt: skip

    def _queued_elsewhere(self, ledgers: Sequence[EndpointLedger], now: float) -> int:
        """The other replicas' requests still waiting for their prefill on these endpoints (shared state):
        they wait in the same queues as this replica's (counting only its own, N replicas each weighed the
        work a choice adds as if the queues were N times shorter: 4 + 4 conversation at ×11.3, hit ×0.96
        of one replica's)."""
        return sum(ledger.remote.queued(now) for ledger in ledgers) if self._heard else 0

    def _weight(self, queued: int, endpoints: int) -> float:
        return self.params.work_weight * (1 + queued / max(1, endpoints))

    def score(self, cycle: CycleState, request: LLMRequest, endpoints: list[EndpointState]) -> list[float]:
        predictions, ledgers = self.predictions(cycle, request, endpoints)
        now = self.clock.now()
        queued = self.predictor.queued(ledgers, now) + self._queued_elsewhere(ledgers, now)
        w = self._weight(queued, len(endpoints))
        relative = self.params.tie_relative / (1 + TIE_QUEUE_WEIGHT * queued / max(1, len(endpoints)))
        scores = np.empty(len(endpoints), dtype=np.float64)
        self._scores(predictions.ttft, predictions.prefill, predictions.cold_prefill, predictions.cached_tokens, w,
                     relative, self._tolerance, self._charge, scores)  # fmt: skip
        result: list[float] = scores.tolist()
        return result

    def booked(self, cycle: CycleState, name: str) -> Prediction | None:
        """The cycle's latest prediction for endpoint ``name``, if it was predicted."""
        booked: list[tuple[list[str], Predictions]] = cycle.get(self._key, [])
        for names, predictions in reversed(booked):
            try:
                return predictions[names.index(name)]
            except ValueError:  # not among this prediction's candidates
                continue
        return None

    # -- scheduler hooks -------------------------------------------------------------------------
    def pre_request(self, cycle: CycleState, request: LLMRequest, result: SchedulingResult) -> None:
        if not result.endpoints:
            return
        chosen = result.endpoints[0]
        prediction = self.booked(cycle, chosen.name)
        if prediction is None:  # chosen by a profile this scorer is not part of
            prediction = self.predict(cycle, request, [chosen])[0]
        output = request.max_tokens if request.max_tokens and request.max_tokens > 0 else self.params.default_output_tokens
        prompt = request.estimated_prompt_tokens
        flight = Flight(self.clock.now(), prediction.prefill, prediction.cold_prefill, prompt, output,
                        streamed=request.stream)
        self._picks += 1  # the plain mean until there are enough picks for the moving one
        weight = max(COLD_MEAN_WEIGHT, 1 / self._picks)
        self.typical_cold_seconds += (prediction.cold_prefill - self.typical_cold_seconds) * weight
        ledger = self._ledger(chosen.name)
        load = self.predictor.load(chosen, ledger)  # the pick's, while the ledger is as it predicted
        self.learner[chosen.name].routed(
            request.request_id, flight.routed_at, prompt, prediction.cached_tokens, load.sequences,
            load.context_tokens, request.stream,
        )
        ledger.routed(request.request_id, flight)
        if self.on_event is not None:  # the others hear of it now, not at the next exchange
            self._emit("b", chosen.name, flight.eta - flight.prefill_seconds, flight.prefill_seconds,
                       flight.context_tokens, flight.output_tokens)
            self._booking_ids[request.request_id] = self._sequence
        hashes = self.producer.info(cycle, request, [chosen]).hashes  # the cycle's, not hashed again
        self._recency(chosen.name).hold(request.request_id, hashes, prompt - prediction.cached_tokens + output)

    def response_started(self, request: LLMRequest, endpoint: EndpointState) -> None:
        ledger = self.ledgers.get(endpoint.name)
        if ledger is not None:
            now = self.clock.now()
            load = self.predictor.load(endpoint, ledger)
            self.learner[endpoint.name].started(request.request_id, now, load.sequences, load.context_tokens)
            ledger.started(request.request_id, now)
            booking = self._booking_ids.pop(request.request_id, 0)
            if self.on_event is not None and request.stream:  # its prefill is over: the others' views drop it
                self._emit("f", endpoint.name, now, booking)

    def response_complete(self, request: LLMRequest, endpoint: EndpointState, usage: Mapping[str, int]) -> None:
        """The response ended; ``usage`` empty when the engine reported none (a failure, or a stream
        without usage): the learner learns only from requests with reported completion tokens."""
        self._booking_ids.pop(request.request_id, None)
        ledger = self.ledgers.get(endpoint.name)
        if ledger is not None:
            now = self.clock.now()
            load = self.predictor.load(endpoint, ledger)
            self.learner[endpoint.name].finished(request.request_id, now, usage, load.sequences, load.context_tokens,
                                                 ledger.remote.pending > 0)
            ledger.finished(request.request_id, now)
        recency = self.recency.get(endpoint.name)
        if recency is not None:
            recency.release(request.request_id)

    def response_failed(self, request: LLMRequest, endpoint: EndpointState, reason: str) -> None:
        """Nothing ran: the flight leaves the ledger without re-anchoring its backlog (a dead engine's
        instant failures must not make it look idle), its prefix was never cached there, and its timing
        is no latency sample."""
        self._booking_ids.pop(request.request_id, None)
        ledger = self.ledgers.get(endpoint.name)
        if ledger is not None:
            ledger.abandoned(request.request_id)
        recency = self.recency.get(endpoint.name)
        if recency is not None:
            recency.forget(request.request_id)
        self.learner[endpoint.name].forget(request.request_id)  # a failure teaches no latency

    # -- shared state (active-active replicas) ----------------------------------------------------
    def export_shared(self, now: float) -> dict[str, Any]:
        """JSON-ready: this replica's own work in flight per busy endpoint, as ``[prefill seconds queued,
        requests without a first token, requests, KV context tokens, output tokens]``, and its own
        learned latency per endpoint it has learned from, as ``[observations, *LatencyEstimate]``."""
        for learner in self.learner.endpoints.values():  # the others hear of every prefill final by now
            learner.flush(now)
        loads: dict[str, list[float | int]] = {}
        queues: dict[str, list[list[float]]] = {}
        lateness: dict[str, float] = {}
        for name, ledger in self.ledgers.items():
            if len(ledger):
                loads[name] = [round(ledger.own_backlog(now), 6), len(ledger.pending), len(ledger),
                               ledger.context_tokens, ledger.output_tokens]
                ids = [self._booking_ids.get(request_id, 0) for request_id in ledger.pending]
                rows = [[round(start - now, 6), round(seconds, 6), i]
                        for (start, seconds), i in zip(ledger.own_intervals(), ids)]  # fmt: skip
                if len(rows) > MAX_INTERVALS:  # the oldest as one block: same end, bounded size
                    head = rows[: len(rows) - MAX_INTERVALS + 1]
                    rows = [[head[0][0], round(sum(r[1] for r in head), 6), 0], *rows[len(head):]]
                if rows:
                    queues[name] = rows
                    late = ledger.lateness(now)
                    if late > 0:
                        lateness[name] = round(late, 6)
        learned: dict[str, list[float | int]] = {}
        for name, learner in self.learner.endpoints.items():
            if learner.observations:
                learned[name] = [learner.observations, *astuple(learner.own_estimate)]
        return {LEDGER_KEY: loads, QUEUE_KEY: queues, LATE_KEY: lateness, LEARNED_KEY: learned,
                ORIGIN_KEY: self.origin, SEQUENCE_KEY: self._sequence}

    def import_shared(self, peers: Sequence[tuple[float, Mapping[str, Any]]], now: float) -> None:
        """The other replicas' latest ``export_shared``, each with its age in seconds: their load becomes
        each ledger's ``remote``, with what their events told since (``import_events``); an empty list (no
        peer, or the shared store unreachable) leaves this replica on its own ledger. Malformed rows are
        skipped."""
        heard, self._heard = self._heard, {}
        for position, (age, payload) in enumerate(peers):
            loads, queues = payload.get(LEDGER_KEY), payload.get(QUEUE_KEY)
            if not isinstance(loads, dict):
                continue
            origin, sequence = payload.get(ORIGIN_KEY), payload.get(SEQUENCE_KEY)
            if isinstance(origin, str) and isinstance(sequence, int):  # what its events told since still counts
                kept = heard.get(origin) or _Heard()
                kept.since(sequence)
            else:  # a peer that sends no events: its export is all there is
                origin, kept = f"#{position}", _Heard()
            kept.loads = {}
            taken = now - max(0.0, age)  # when the peer exported, on this epp's clock
            lateness = payload.get(LATE_KEY)
            for name, row in loads.items():
                if name not in self.ledgers or not _load_row(row):
                    continue
                queue = queues.get(name) if isinstance(queues, dict) else None
                late = lateness.get(name, 0.0) if isinstance(lateness, dict) else 0.0
                if not _numbers([late], 1):
                    late = 0.0
                if isinstance(queue, list) and all(_interval(q) for q in queue):
                    queued = [(taken + q[0], q[1], int(q[2]) if len(q) == 3 else 0, late) for q in queue]
                else:  # no intervals: its backlog, as one block from then
                    queued = [(taken, row[0], 0, 0.0)] if row[0] > 0 else []
                kept.loads[name] = ([int(v) for v in row[1:]], queued)
            self._heard[origin] = kept
        for origin, kept in heard.items():  # heard of only through its events so far: kept for a ttl
            if origin not in self._heard and kept.sequence < 0 and kept.bookings and kept.bookings[-1][2] > now - 1.0:
                self._heard[origin] = kept
        self._set_remote(self.ledgers, now)
        self._adopt_learned(peers)
        self._peers_heard(peers, now)

    def _peers_heard(self, peers: Sequence[tuple[float, Mapping[str, Any]]], now: float) -> None:
        """Each endpoint's learner is told up to when the others' prefill intervals have all been heard: a
        replica that sends events learns what is final before it exports (``EndpointLearner.flush``) and
        sends its intervals then, so its export taken at ``t`` says every one that ended before ``t −
        MERGE_GAP`` is out (peers that send no events send no intervals: none to wait for)."""
        taken = [now - max(0.0, age) for age, payload in peers if isinstance(payload.get(ORIGIN_KEY), str)]
        until = min(taken) - MERGE_GAP if taken else math.inf
        for name, learner in self.learner.endpoints.items():
            ledger = self.ledgers.get(name)
            learner.peers_heard(until, ledger is not None and ledger.remote.pending > 0)

    def _set_remote(self, names: Iterable[str], now: float) -> None:
        """Each named ledger's ``remote``: the other replicas' exported load there, their bookings heard of
        since, less the prefills their first tokens said are over."""
        for name in names:
            ledger = self.ledgers.get(name)
            if ledger is None:
                continue
            total = [0, 0, 0, 0]  # pending, requests, KV context tokens, output tokens
            queued: list[tuple[float, float]] = []
            etas: list[float] = []
            found = False
            for kept in self._heard.values():
                load = kept.loads.get(name)
                if load is not None:
                    found = True
                    for i, v in enumerate(load[0]):
                        total[i] += v
                    for start, seconds, booking, late in load[1]:
                        if booking in kept.started:
                            total[0] -= 1
                        else:
                            queued.append((start + late, seconds))
                            etas.append(start + seconds)
                for seq, booked, start, seconds, context, output in kept.bookings:
                    if booked == name:
                        found = True
                        total[1] += 1
                        total[2] += context
                        total[3] += output
                        if seq not in kept.started:
                            total[0] += 1
                            queued.append((start, seconds))
                            etas.append(start + seconds)
            if not found:
                ledger.set_remote(NO_REMOTE)
                continue
            queued.sort()
            etas.sort()
            seconds_left = max(0.0, queue_end(queued) - now) if queued else 0.0
            pending, requests, context, output = total
            ledger.set_remote(RemoteLoad(seconds_left, now, max(0, pending), requests, context, output, tuple(queued),
                                         tuple(etas)))  # fmt: skip

    def _emit(self, kind: str, name: str, at: float, *values: float) -> None:
        self._sequence += 1
        self._outbox.append((self._sequence, kind, name, at, values))
        if len(self._outbox) > MAX_EVENTS:  # no exchange drains them: the next export says it all
            del self._outbox[: len(self._outbox) - MAX_EVENTS]
        if len(self._outbox) == 1 and self.on_event is not None:
            self.on_event()

    def _report(self, name: str, kind: str, features: Sequence[float], seconds: float, span: Sequence[float]) -> None:
        if self.on_event is not None:
            at = self.clock.now()
            if span:  # a prefill's interval, as seconds before ``at`` (ended that long ago, lasted, extra)
                start, end, extra = span
                self._emit(kind, name, at, *features, seconds, max(0.0, at - end), end - start, extra)
            else:
                self._emit(kind, name, at, *features, seconds)

    def take_events(self) -> list[Any]:
        """The bookings (``[origin, sequence, "b", endpoint, start, prefill seconds, KV context tokens, output
        tokens]``), streamed first tokens (``[origin, sequence, "f", endpoint, time, its booking's sequence]``) and latency
        observations (``[origin, sequence, "p" or "d", endpoint, time, *features, seconds]``, a prefill's
        followed by its interval: how long before ``time`` it ended, its length, the seconds it added to the
        decodes' iterations; ``EndpointLearner.report``) since the last call, times relative to now."""
        now = self.clock.now()
        events = [[self.origin, seq, kind, name, round(at - now, 6), *(round(v, 6) for v in values)]
                  for seq, kind, name, at, values in self._outbox]  # fmt: skip
        self._outbox = []
        return events

    def import_events(self, events: Sequence[Any], age: float, now: float) -> None:
        """Another replica's ``take_events``, sent ``age`` seconds ago. A booking joins the endpoint's remote
        load at once (until an export from its replica holds it); a first token takes that request's
        prefill out of it (until an export no longer holds it) and tells the endpoint's learner that
        another replica's prefill ended there (``EndpointLearner.foreign_first_token``); an observation is
        learned as if this replica had made it. Malformed events are skipped."""
        sent = now - max(0.0, age)
        changed: set[str] = set()
        for event in events:
            if not _event(event):
                continue
            origin, seq, kind, name, at = event[:5]
            ledger = self.ledgers.get(name)
            if ledger is None:  # an endpoint this replica does not know (yet, or any more)
                continue
            heard = self._heard.setdefault(origin, _Heard())
            if seq <= heard.sequence:
                continue  # its replica's export already holds it
            if kind == "b":
                heard.bookings.append((seq, name, sent + at, event[5], int(event[6]), int(event[7])))
                changed.add(name)
            elif kind == "f":
                self.learner[name].foreign_first_token(sent + at)
                ledger.foreign_started(sent + at)
                if event[5]:
                    heard.started[int(event[5])] = seq
                    changed.add(name)
            elif kind == PREFILL:
                learner = self.learner[name]
                learner.observe_prefill(event[5:8], event[8])
                if len(event) > 9:  # its interval (older replicas send none)
                    end = sent + at - event[9]
                    learner.foreign_prefill(end - event[10], end, event[11])
            else:
                self.learner[name].observe_decode(event[5:8], event[8])
        if changed:
            self._set_remote(changed, now)

    def _adopt_learned(self, peers: Sequence[tuple[float, Mapping[str, Any]]]) -> None:
        """Per endpoint, predict with the latency learned by the replica that has seen most of it, while
        this one has seen less than the learner's memory (1 / (1 − forgettingFactor) observations): a
        replica that just started, or sees 1/N of the traffic, predicts as well as the best informed."""
        memory = 1 / max(1e-9, 1 - self.params.forgetting_factor)
        best: dict[str, list[float]] = {}
        for _, payload in peers:
            learned = payload.get(LEARNED_KEY)
            if not isinstance(learned, dict):
                continue
            for name, row in learned.items():
                if _learned_row(row) and row[0] > best.get(name, [0])[0]:
                    best[name] = row
        for name, learner in self.learner.endpoints.items():
            row = best.get(name)
            own = learner.observations
            learner.adopt(LatencyEstimate(*row[1:]) if row is not None and row[0] > own and own < memory else None)

    # -- datastore listener ----------------------------------------------------------------------
    def endpoint_added(self, endpoint: Endpoint) -> None:
        """Ledgers are created on first use."""

    def endpoint_removed(self, endpoint: Endpoint) -> None:
        self.ledgers.pop(endpoint.name, None)
        self._last_candidates = []  # its ledger is gone: the next pick looks the candidates up again
        self.recency.pop(endpoint.name, None)
        self.learner.remove(endpoint.name)
        self.predictor.forget(endpoint.name)


def _scores(
    ttft: Floats, prefill: Floats, cold: Floats, cached: Ints, weight: float, relative: float, tolerance: float,
    charge: int, scores: Floats,
) -> None:
    """The scores of one pick from its predictions (aligned), compiled (``epp._util.jit``; one call where
    numpy took ~20, each ~1 µs whatever the endpoint count): cost = ``ttft`` + ``weight`` × the work λ
    charges; a cost within ``relative`` of the least becomes the least (``tieRelative``, already divided by
    1 + ``TIE_QUEUE_WEIGHT`` × the mean queue; 0: none); then rounded up to ``tolerance`` (a zero to one
    tolerance) so endpoints within it tie exactly; score = least cost ÷ cost. ``charge``: the position of
    ``workCharge`` in ``WORK_CHARGES``.

    The work λ charges, per endpoint, by ``workCharge``:

    - ``prefill``: its whole predicted prefill, plus the prefix it strands (below);
    - ``miss``: only the prefill choosing it adds because it holds less of the prompt than the
      warmest endpoint, plus what it strands. The added prefill is its own prefill less what it
      would be with the warmest hit, taken as its cold prefill × (1 − the share of the cold prefill
      the warmest hit saves): 0 on the warmest, the saving missed elsewhere, in its own seconds;
    - ``capped`` (default): ``miss`` plus the rest of its prefill (what it pays whatever the hit),
      at most ``BASE_CAP`` × the least of that over the candidates.

    On a pool of one kind the prefill every endpoint pays anyway is about the same everywhere, so
    the three order endpoints alike, up to learned noise (``capped`` and ``prefill`` exactly alike
    while that stays within ``BASE_CAP``). On a mixed pool, ``prefill`` charges λ × a slow engine's
    whole prefill: with λ = 2 × (1 + mean queue) ≈ 10 under a burst, long prompts stayed off idle 8B
    engines while the 1B ones queued (4 + 4 synthetic at gie-default's knee, on the simulator's exact
    numbers: TTFT p90 1.45× gie-default; ``miss`` 0.63×; bench/RESULTS.md, branch ``mixfloor``).
    ``miss`` loses the little exploration the learned noise gave a pool of one kind (8 × 8B
    conversation ×1: three engines unused for ~300 requests, hits 0.67 of the bound), hence ``capped``.

    The stranded prefix: per endpoint, the prefill seconds of the prompt's prefix that choosing it
    leaves stranded on the endpoint holding most of it (0 there; nothing anywhere when every endpoint
    holds as much). A request that leaves its conversation's cached prefix pays that prefill again now
    (its own ``prefill``) and leaves a copy that no later turn reads, holding KV another conversation's
    prefix is evicted for — work a later request pays again. Charged like the prefill itself (× λ),
    it keeps a follow-up with its prefix unless the wait saved exceeds the work lost twice. Its
    size: the share of the prompt's cold prefill the warmest endpoint's cache saves (the least
    among equally warm ones, the first of them on a tie), in proportion to the tokens this endpoint does
    not hold, valued at the higher of the two endpoints' cold prefills: the prefix is redone at this
    endpoint's speed and its copy was cached (and is now stranded) at the warm one's, and the work lost
    is at least either. In a pool of one kind the two are the same; in a mixed pool the warm endpoint's
    seconds alone let a follow-up leave a fast warm engine for a slow one too cheaply (4 + 4 synthetic
    knee 1.78 s against 1.35 s with the higher; the 8 × 8B conversation knee 1.10 against 1.14 s).

    The float operations are numpy's as this scorer made them before it was compiled, in the same
    order (``np.maximum(a, b)`` spelled ``a if a >= b or a != a else b``, ``np.minimum`` alike), so the
    scores are the same bits (tests/scheduling/plugins/test_ttft_scores_exact.py)."""
    n = ttft.shape[0]
    if n == 0:
        return
    work = scores  # the work λ charges, then the cost, then the score, in place
    held, most, least = 0, cached[0], cached[0]
    for i in range(n):
        held += cached[i] != 0
        most = max(most, cached[i])
        least = min(least, cached[i])
    charged = True  # False: λ charges nothing anywhere (``miss`` with no miss)
    if not held or (held == n and most == least):  # no miss, nothing stranded
        charged = charge != _MISS
        for i in range(n):
            work[i] = prefill[i]
        if charge == _CAPPED:
            cap = BASE_CAP * work.min()
            for i in range(n):
                work[i] = work[i] if work[i] <= cap or work[i] != work[i] else cap
    else:
        share, ref = math.inf, 0
        for i in range(n):  # the warmest (usually one)
            if cached[i] == most:
                warm = cold[i]
                warm_share = (warm - prefill[i]) / (MIN_SECONDS if MIN_SECONDS > warm else warm)
                if warm_share < share:  # the first minimum
                    share, ref = warm_share, i
        base = np.empty(n, dtype=np.float64)
        for i in range(n):
            c = cold[i]
            strand = c if c >= cold[ref] or c != c else cold[ref]
            strand *= share
            strand *= most - cached[i]
            strand /= most
            if charge == _PREFILL:
                work[i] = strand + prefill[i]
                continue
            added = c * (share - 1.0)
            added += prefill[i]
            added = added if added >= 0.0 or added != added else 0.0
            if cached[i] == most:
                added = 0.0
            work[i] = strand + added
            base[i] = prefill[i] - added
        if charge == _CAPPED:
            cap = BASE_CAP * base.min()
            for i in range(n):
                b = base[i]
                work[i] += b if b <= cap or b != b else cap
    for i in range(n):
        work[i] = work[i] * weight + ttft[i] if charged else ttft[i]
    if relative:  # within ``relative`` of the cheapest: the cheapest's cost, a tie
        cheapest = work.min()
        bound = cheapest * (1 + relative)
        for i in range(n):
            if work[i] <= bound:
                work[i] = cheapest
    for i in range(n):
        cost = work[i] / tolerance
        cost = np.ceil(cost)
        cost *= tolerance
        work[i] = tolerance if cost == 0.0 else cost
    least_cost = work.min()
    for i in range(n):
        scores[i] = least_cost / work[i]


_CAPPED, _MISS, _PREFILL = (WORK_CHARGES.index(c) for c in (CHARGE_CAPPED, CHARGE_MISS, CHARGE_PREFILL))
_SCORES_SIGNATURE = (
    "void(float64[::1], float64[::1], float64[::1], int64[::1], float64, float64, float64, int64, float64[::1])"
)


LEDGER_KEY = "ledger"


LEARNED_KEY = "learned"
QUEUE_KEY = "queue"
LATE_KEY = "late"
ORIGIN_KEY = "origin"
SEQUENCE_KEY = "sequence"
EVENT_LENGTHS: dict[str, tuple[int, ...]] = {"f": (6,), "b": (8,), PREFILL: (9, 12), DECODE: (9,)}
"""Each kind's event lengths; a prefill's 12 carry its interval, 9 are a replica's from before it did."""
MAX_EVENTS = 4096
"""Events kept for the exchange to take; older ones are dropped (only if no exchange drains them)."""


@dataclass(slots=True)
class _Heard:
    """What this replica knows of another one: the last event its latest export holds (-1: no export seen
    yet); that export's load per endpoint (totals: pending, requests, KV context tokens, output tokens;
    and its pending prefills as (start, seconds, booking sequence or 0, its lateness)); its bookings heard of since, as
    (sequence, endpoint, start, seconds, context, output); and the bookings whose first token was heard
    since, with that event's sequence."""

    sequence: int = -1
    loads: dict[str, tuple[list[int], list[tuple[float, float, int, float]]]] = field(default_factory=dict)
    bookings: list[tuple[int, str, float, float, int, int]] = field(default_factory=list)
    started: dict[int, int] = field(default_factory=dict)

    def since(self, sequence: int) -> None:
        """An export holding its events up to ``sequence`` arrived: forget what it now says itself."""
        self.sequence = max(self.sequence, sequence)
        self.bookings = [b for b in self.bookings if b[0] > self.sequence]
        self.started = {booking: seq for booking, seq in self.started.items() if seq > self.sequence}


def _event(item: object) -> bool:
    """A well-formed event of ``take_events``."""
    if not (isinstance(item, list) and len(item) >= 5 and isinstance(item[0], str) and isinstance(item[1], int)
            and isinstance(item[3], str) and len(item) in EVENT_LENGTHS.get(item[2], ())):  # fmt: skip
        return False
    numbers = item[4:]
    return all(isinstance(v, (int, float)) and not isinstance(v, bool) and abs(v) < 1e12 for v in numbers) and (
        min(numbers[1:], default=0) >= 0
    )


MAX_INTERVALS = 64
"""Pending prefills reported per endpoint; older ones are merged into one block (same queue end)."""


def _interval(item: object) -> bool:
    """A well-formed queued-prefill interval: [start relative to the export, seconds ≥ 0, optionally its
    booking's sequence number ≥ 0], finite."""
    return (
        isinstance(item, list) and len(item) in (2, 3)
        and all(isinstance(v, (int, float)) and not isinstance(v, bool) and abs(v) < 1e9 for v in item)
        and item[1] >= 0 and (len(item) == 2 or (isinstance(item[2], int) and item[2] >= 0))
    )  # fmt: skip


def _numbers(row: object, length: int) -> bool:
    return (
        isinstance(row, list) and len(row) == length
        and all(isinstance(v, (int, float)) and not isinstance(v, bool) and 0 <= v < 1e12 for v in row)
    )  # fmt: skip


def _load_row(row: object) -> bool:
    """A well-formed ledger row of ``export_shared``: five non-negative finite numbers."""
    return _numbers(row, 5)


def _learned_row(row: object) -> bool:
    """A well-formed learned-latency row: observations and the six ``LatencyEstimate`` coefficients."""
    return _numbers(row, 1 + len(fields(LatencyEstimate)))


def find_prefix_producer(name: str, wanted: str | None, handle: PluginHandle) -> ApproxPrefixCacheProducer:
    """``wanted`` by name, else the first configured prefix producer, else one created (named after ``name``)."""
    if wanted is not None:
        found = handle.plugins.get(wanted)
        if not isinstance(found, ApproxPrefixCacheProducer):
            raise ParamError("prefixMatchInfoProducerName", f"no prefix producer plugin named {wanted!r}")
        return found
    configured = next((p for p in handle.plugins.values() if isinstance(p, ApproxPrefixCacheProducer)), None)
    if configured is not None:  # the approximate producer or a precise one (a subclass)
        return configured
    producer_name = APPROX_PREFIX_CACHE_PRODUCER if handle.available(APPROX_PREFIX_CACHE_PRODUCER) else f"{name}-producer"
    producer = ApproxPrefixCacheProducer(producer_name, PrefixIndexParams(max_prefix_tokens_to_match=MATCH_TOKENS))
    handle.add(producer)
    return producer


def factory(name: str, params: Mapping[str, Any], handle: PluginHandle) -> TTFTPredictorScorer:
    p = decode_params(TTFTPredictorParams, params)
    return TTFTPredictorScorer(find_prefix_producer(name, p.prefix_match_info_producer_name, handle), handle.clock, name, p)
