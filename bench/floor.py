"""What any router could reach on one head: an oracle that knows the simulator, and the prefill floor.

Issue #15 asks ``default`` for TTFT p90 ≤ 0.85× ``llm-d-default``'s at gie-default's knee. Where it
misses, the standing explanation was "both sit near the prefill floor". This bench measures it, on one
trace head, 8 engines of ``--profile``, at ``--rate`` × the trace's speed:

- the presets given by ``--policies`` (each as ``epp replay`` runs it, ``epp.replay.runner.run_one``);
  for one with a ``ttft-predictor-scorer`` (``default``), its booked prediction beside the truth term by
  term (hit, prefill, wait, TTFT; all requests and the p80 tail);
- oracles, bench-only policies (never shipped: they read the simulator) that, for every request and every
  engine, replay the engine's own scheduler rules forward with its exact latency model and its exact state
  — running and waiting requests, each one's computed tokens and outputs left, the step in flight, the
  prefix cache's hit for every waiting prompt — and route to the smallest cost: ``oracle`` the request's
  own forecast TTFT; ``oracle-social`` that plus the first-token delay it adds to the requests already
  there; ``oracle-default`` ``default``'s own cost on these exact numbers. They know everything but the
  future: later arrivals that share their steps, and KV pressure (preemption), are not forecast;
- two floors (no load at all, so no queue): per request, the TTFT of its prompt prefilled alone on an
  idle engine (chunks of ``max_num_batched_tokens``, the latency model's own step costs)
  - ``floor (own hits)``: with the prefix hit the request really got in that run (the policy's placement
    at zero queueing cost),
  - ``floor (ideal hits)``: with the longest prefix any earlier request of the trace had written, at the
    engine's block granularity (one unlimited cache: no router can hit more). Every request's TTFT under
    any router is at least this, so its p90 bounds every router's p90 from below.

Prints Markdown: per rate a table (hit ratio, TTFT p50/p90, p90 ÷ llm-d-default and ÷ gie-default, the
floors' p90 per run) and the oracles' forecast error; with ``--spread`` (multiples of ``--rate``) also
every policy's p90 at each rate and pooled over them, since one rate's p90 over a 500-request head is set
by ~50 requests and moves with a few long prompts.

    python bench/floor.py traces/mooncake_fast25_synthetic_trace.jsonl --profile llama-3.2-1b-h100 \\
        --rate 14.67206469127474 [--spread 0.98,0.99,1,1.01,1.02] [--max-requests 500] \\
        [--policies llm-d-default,gie-default,default] [--oracles oracle,oracle-social,oracle-default]
"""

from __future__ import annotations

import argparse
import math
import statistics
import random
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from epp._util.clock import VirtualClock
from epp._util.hashing import chain_hashes, seed_hash, token_blocks
from epp.datastore import EndpointState
from epp.engine.config import EngineConfig
from epp.engine.core import EngineCore, StepOutput
from epp.engine.latency import LatencyModel
from epp.plugin.typed_name import TypedName
from epp.replay.offline import ClusterSpec, OfflineReplay, RunResult, parse_profiles
from epp.replay.policies import resolve
from epp.replay.runner import Job, trace_bounds
from epp.replay.summary import percentile
from epp.replay.traces import read_trace
from epp.replay.traces.model import TraceRequest
from epp.request import LLMRequest
from epp.scheduling import Scheduler
from epp.scheduling.framework import CycleState
from epp.scheduling.plugins.pickers.max_score import MaxScorePicker
from epp.scheduling.plugins.profiles.single import SingleProfileHandler
from epp.scheduling.plugins.scorers.ttft_predictor import TTFTPredictorScorer
from epp.scheduling.profile import SchedulerProfile, WeightedScorer
from epp.scheduling.ttft import Prediction
from ttft_accuracy import record_bookings  # bench/ is on sys.path when run as a script

ENGINES = 8
ORACLE = "oracle"
SOCIAL = "oracle-social"
AS_DEFAULT = "oracle-default"
AS_DEFAULT_MISS = "oracle-default-miss"
AS_DEFAULT_OWN = "oracle-default-own"
AS_DEFAULT_CAPPED = "oracle-default-capped"
ORACLES = (ORACLE, SOCIAL, AS_DEFAULT, AS_DEFAULT_MISS, AS_DEFAULT_OWN, AS_DEFAULT_CAPPED)
"""``oracle-default-miss`` and ``oracle-default-own`` are ``default``'s cost with the work term changed
(``default_costs``), to judge a change of the cost formula on exact numbers before the learner's errors
enter: only the work a miss adds over the warmest endpoint's hit, and λ from each endpoint's own queue;
``oracle-default-capped`` is ``workCharge: capped`` (the miss, plus the prefill any endpoint pays up to 1.25×
the least of it), the preset's since branch ``mixfloor``; ``oracle-default`` stays ``workCharge: prefill``."""
DEFAULT_WORK_WEIGHT = 2.0
"""The ``default`` preset's ``workWeight`` (epp/config/presets.py)."""
TIE_TOLERANCE = 0.002
"""``ttft-predictor-scorer``'s ``tieTolerance`` default."""
_Step = Callable[[float, float | None], StepOutput]
"""The shape of ``EngineCore.step`` (the replay passes both arguments)."""
LLM_D = "llm-d-default"
BASELINE = "gie-default"


def lone_ttft(latency: LatencyModel, budget: int, prompt: int, hit: int) -> float:
    """A prompt of ``prompt`` tokens with ``hit`` cached, prefilled alone on an idle engine: its chunks
    of at most ``budget`` tokens, one step each (what ``EngineCore`` charges a lone request)."""
    seconds = 0.0
    computed = hit
    while computed < prompt:
        chunk = min(prompt - computed, budget)
        if chunk == 1:  # the engine prices a one-token chunk as a decode (EngineCore._duration)
            seconds += latency.step(1, computed + 1, 0.0)
        else:
            seconds += latency.step(chunk, 0, latency.prefill_attention(computed, chunk))
        computed += chunk
    return seconds


def cached_prefix(engine: EngineCore, hashes: Sequence[int], prompt: int) -> int:
    """Tokens of the prompt ``engine``'s prefix cache holds now (whole blocks, the last token recomputed),
    as its scheduler's ``get_computed_blocks`` would find them, without touching the cache."""
    if not engine.pool.enable_caching:
        return 0
    get = engine.pool.get_cached_block
    blocks = 0
    for block_hash in hashes[: (prompt - 1) // engine.block_size]:
        if get(block_hash) is None:
            break
        blocks += 1
    return blocks * engine.block_size


@dataclass(slots=True)
class _Sim:
    """One request in the forecast: tokens so far (prompt + outputs), tokens with KV, outputs left, and
    its first token's time once forecast (``None``: not yet; ``-1``: it had one before the forecast)."""

    tokens: int
    computed: int
    left: int
    first: float | None = None


def _queue(engine: EngineCore) -> tuple[list[_Sim], list[_Sim]]:
    """``engine``'s running and waiting requests as forecast state; a waiting prompt is admitted with
    the hit its prefix cache holds now."""
    scheduler = engine.scheduler
    running = [_Sim(r.num_tokens, r.num_computed_tokens, r.remaining_tokens, -1.0 if r.num_output_tokens else None)
               for r in scheduler.running]
    waiting = [_Sim(r.num_tokens, cached_prefix(engine, r.block_hashes, r.num_tokens), r.remaining_tokens,
                    -1.0 if r.num_output_tokens else None) for r in scheduler.waiting]
    return running, waiting


def forecast(engine: EngineCore, start: float, running: list[_Sim], waiting: list[_Sim]) -> None:
    """Fill ``first`` of every request that has none, as if nothing else arrived: the engine's scheduler
    (``epp.engine.scheduler``: running first in order, each up to its gap under the shared token budget,
    then waiting ones admitted in order while budget and ``max_num_seqs`` allow) replayed step by step
    from ``start`` (the end of the step in flight), each step priced by the engine's latency model. KV
    allocation is assumed to succeed (no preemption forecast). Mutates the lists."""
    latency = engine.latency
    scheduler = engine.scheduler
    max_seqs = scheduler.max_num_seqs
    pending = sum(1 for r in (*running, *waiting) if r.first is None)
    t = start
    while pending:
        budget = scheduler.max_num_batched_tokens
        stepped: list[tuple[_Sim, int]] = []
        for r in running:
            if budget <= 0:
                break
            stepped.append((r, min(r.tokens - r.computed, budget)))
            budget -= stepped[-1][1]
        while waiting and budget > 0 and len(running) < max_seqs:
            r = waiting.pop(0)
            running.append(r)
            stepped.append((r, min(r.tokens - r.computed, budget)))
            budget -= stepped[-1][1]
        num_tokens = 0
        decode_context = 0
        attention = 0.0
        for r, new in stepped:  # priced as EngineCore._duration does: a one-token chunk reads like a decode
            num_tokens += new
            if new == 1:
                decode_context += r.computed + 1
            else:
                attention += latency.prefill_attention(r.computed, new)
            r.computed += new
        t += latency.step(num_tokens, decode_context, attention)
        for r, _ in stepped:
            if r.computed >= r.tokens:  # its prompt (or last output) is computed: one token sampled
                if r.first is None:
                    r.first = t
                    pending -= 1
                r.tokens += 1
                r.left -= 1
        running = [r for r in running if r.left > 0]


@dataclass(frozen=True, slots=True)
class Forecast:
    """What sending one request to one engine would do, if nothing else arrived."""

    ttft: float
    hit: int
    """Tokens of its prompt the engine's prefix cache holds."""
    pending: int
    """Requests on the engine still waiting for their first token (the request itself not counted)."""
    delay: float
    """Seconds it adds, summed, to those requests' first tokens (computed for ``social`` only, else 0)."""


def forecast_request(engine: EngineCore, free_at: float, now: float, hashes: Sequence[int], prompt: int,
                     max_tokens: int, social: bool) -> Forecast:
    """The ``Forecast`` of a request arriving at ``now`` on ``engine``, its step in flight ending at ``free_at``."""
    start = max(free_at, now)
    running, waiting = _queue(engine)
    others = [*running, *waiting]
    pending = sum(1 for r in others if r.first is None)
    hit = cached_prefix(engine, hashes, prompt)
    mine = _Sim(prompt, hit, max_tokens)
    forecast(engine, start, running, [*waiting, mine])
    assert mine.first is not None
    delay = 0.0
    if social and pending:
        running, waiting = _queue(engine)
        forecast(engine, start, running, list(waiting))
        delay = sum(w.first - o.first for w, o in zip(others, (*running, *waiting))
                    if w.first is not None and o.first is not None and o.first >= 0)
    return Forecast(mine.first - now, hit, pending, delay)


def default_costs(forecasts: Sequence[Forecast], prefill: Sequence[float], cold: Sequence[float],
                  at_most: Sequence[float] | None = None, own_queue: bool = False,
                  cap: float | None = None) -> list[float]:
    """``default``'s pick cost (``ttft_predictor.py``: TTFT + λ · (prefill + stranded), λ = ``workWeight``
    2 × (1 + mean requests waiting for a first token), costs rounded up to the 2 ms tie tolerance) on exact
    numbers: forecast TTFT, the lone prefill with the engine's hit and without any, the true queues.
    Variants: ``at_most`` (per engine, its lone prefill with the warmest engine's hit) charges only the
    work beyond it (``prefill − at_most``: what the miss adds, not the engine's speed); ``own_queue`` takes
    λ per engine from its own queue instead of the mean."""
    mean = DEFAULT_WORK_WEIGHT * (1 + sum(f.pending for f in forecasts) / len(forecasts))
    weights = [DEFAULT_WORK_WEIGHT * (1 + f.pending) if own_queue else mean for f in forecasts]
    if at_most is not None:
        prefill = [p - a for p, a in zip(prefill, at_most)]
        if cap is not None:  # plus what each pays whatever the hit, up to cap × the least of it
            least = min(at_most)
            prefill = [p + min(a, cap * least) for p, a in zip(prefill, at_most)]
    most = max(f.hit for f in forecasts)
    stranded = [0.0] * len(forecasts)
    if most > min(f.hit for f in forecasts):
        warm = [i for i, f in enumerate(forecasts) if f.hit == most]
        share, ref = min(((cold[i] - prefill[i]) / max(cold[i], 1e-9), i) for i in warm)
        stranded = [share * max(cold[i], cold[ref]) * (most - f.hit) / most for i, f in enumerate(forecasts)]
    return [math.ceil((f.ttft + weight * (p + x)) / TIE_TOLERANCE) * TIE_TOLERANCE
            for f, p, x, weight in zip(forecasts, prefill, stranded, weights)]


class OracleScorer:
    """Scores each endpoint ``min cost ÷ its cost`` (1 for the best); the cost, by ``mode``: ``oracle`` the
    forecast TTFT, ``oracle-social`` that plus the delay added to requests already there, ``oracle-default``
    ``default``'s own cost on exact numbers (``default_costs``). Reads the replay's engines, attached after
    the replay is built (``attach``)."""

    def __init__(self, mode: str) -> None:
        if mode not in ORACLES:
            raise ValueError(f"unknown oracle {mode!r}; known: {', '.join(ORACLES)}")
        self.mode = mode
        self.typed_name = TypedName("oracle-ttft-scorer", mode)
        self.engines: dict[str, EngineCore] = {}
        self.free_at: dict[str, float] = {}
        self.clock: VirtualClock | None = None
        self.seed = 0
        self.forecasts: dict[str, dict[str, float]] = {}
        """Per request id, the forecast TTFT on every candidate (to check the forecast against the run)."""

    def attach(self, replay: OfflineReplay) -> None:
        """Watch every engine's steps to know when the one in flight ends (the next step's start)."""
        self.clock = replay.clock
        self.seed = seed_hash(replay.cluster.engine.model)
        for endpoint, engine in zip(replay.endpoints, replay.engines):
            self.engines[endpoint.name] = engine
            self.free_at[endpoint.name] = 0.0
            engine.step = self._watch(endpoint.name, engine.step)  # type: ignore[method-assign,assignment]

    def _watch(self, name: str, step: _Step) -> _Step:
        def watched(now: float, horizon: float | None) -> StepOutput:
            out = step(now, horizon)
            self.free_at[name] = now + out.duration
            return out
        return watched

    def score(self, cycle: CycleState, request: LLMRequest, endpoints: list[EndpointState]) -> Sequence[float]:
        assert self.clock is not None, "attach() the oracle to its replay before it routes"
        now = self.clock.now()
        tokens = request.prompt_token_ids or []
        names = [state.endpoint.name for state in endpoints]
        engines = [self.engines[name] for name in names]
        hashes = chain_hashes(token_blocks(tokens, engines[0].block_size), self.seed)
        forecasts = [forecast_request(engine, self.free_at[name], now, hashes, len(tokens), request.max_tokens or 1,
                                      self.mode == SOCIAL) for name, engine in zip(names, engines)]
        self.forecasts[request.request_id] = {name: f.ttft for name, f in zip(names, forecasts)}
        if self.mode == ORACLE:
            costs = [f.ttft for f in forecasts]
        elif self.mode == SOCIAL:
            costs = [f.ttft + f.delay for f in forecasts]
        else:
            budgets = [engine.scheduler.max_num_batched_tokens for engine in engines]
            prefill = [lone_ttft(e.latency, b, len(tokens), f.hit) for e, b, f in zip(engines, budgets, forecasts)]
            cold = [lone_ttft(e.latency, b, len(tokens), 0) for e, b in zip(engines, budgets)]
            most = max(f.hit for f in forecasts)
            at_most = ([lone_ttft(e.latency, b, len(tokens), most) for e, b in zip(engines, budgets)]
                       if self.mode in (AS_DEFAULT_MISS, AS_DEFAULT_CAPPED) else None)
            costs = default_costs(forecasts, prefill, cold, at_most, own_queue=self.mode == AS_DEFAULT_OWN,
                                  cap=1.25 if self.mode == AS_DEFAULT_CAPPED else None)
        best = min(costs)
        return [best / c if c > 0 else 1.0 for c in costs]


def run_oracle(requests: Sequence[TraceRequest], cluster: ClusterSpec, rate: float,
               mode: str) -> tuple[RunResult, OracleScorer]:
    clock = VirtualClock()
    scorer = OracleScorer(mode)
    profile = SchedulerProfile(mode, MaxScorePicker(rng=random.Random(0)), scorers=[WeightedScorer(scorer)])
    scheduler = Scheduler({mode: profile}, SingleProfileHandler())
    replay = OfflineReplay(requests, [scheduler], cluster, clock, rate)
    scorer.attach(replay)
    return replay.run(), scorer


def ideal_hits(requests: Sequence[TraceRequest], block_size: int) -> list[int]:
    """Per request, the longest prefix (whole blocks, last token recomputed) written by any earlier
    request's prompt: what one unlimited cache would hold for it."""
    seen: set[int] = set()
    hits = []
    for request in requests:
        tokens = request.prompt.tokens()
        hashes = chain_hashes(token_blocks(tokens, block_size), 0)
        blocks = 0
        for block_hash in hashes[: (len(tokens) - 1) // block_size]:
            if block_hash not in seen:
                break
            blocks += 1
        hits.append(blocks * block_size)
        seen.update(hashes)
    return hits


def lone_times(run: RunResult, cluster: ClusterSpec, hits: Sequence[int] | None = None) -> list[float]:
    """Each completed request's lone-prefill TTFT, sorted: with the hit it got in the run, on the engine
    that served it (its profile's latency model); or, given ``hits`` (the ideal ones), on the fastest
    profile of the pool for that prompt — on a mixed pool any router could have sent it there, so only
    the cheapest engine bounds every router (on one profile both are the same engine kind)."""
    models = [cluster.engine_config(e).latency_model() for e in range(cluster.engines)]
    kinds = list({cluster.engine_config(e).profile: m for e, m in enumerate(models)}.values())
    budget = cluster.engine.max_num_batched_tokens
    return sorted(
        lone_ttft(models[r.engine], budget, r.prompt_tokens, r.cached_tokens) if hits is None
        else min(lone_ttft(m, budget, r.prompt_tokens, hits[i]) for m in kinds)
        for i, r in enumerate(run.records) if r.first_token is not None
    )


def floor_p90(run: RunResult, cluster: ClusterSpec, hits: Sequence[int] | None = None) -> float:
    """p90 of ``lone_times``."""
    value = percentile(lone_times(run, cluster, hits), 90)
    if value is None:
        raise ValueError("no request completed")
    return value


def ttft_percentile(run: RunResult, p: float) -> float:
    """TTFT percentile over the run's completed requests (arrival to first token, as the summary's)."""
    value = percentile(sorted(r.first_token - r.arrival for r in run.records if r.first_token is not None), p)
    if value is None:
        raise ValueError("no request completed")
    return value


def hit_ratio(run: RunResult) -> float:
    done = [r for r in run.records if r.first_token is not None]
    return sum(r.cached_tokens for r in done) / max(1, sum(r.prompt_tokens for r in done))


def run_policy(requests: Sequence[TraceRequest], spec: str, cluster: ClusterSpec,
               rate: float) -> tuple[RunResult, dict[str, Prediction] | None]:
    """One preset's run as ``epp.replay.runner.run_one`` makes it, with what its ``ttft-predictor-scorer``
    booked per request when it has one (else None)."""
    policy = resolve(spec)
    clock = VirtualClock()
    job = Job(spec, rate)
    schedulers, _ = job.replicas.build(policy, clock, job.seed)
    scorer = next((p for p in schedulers[0].plugins if isinstance(p, TTFTPredictorScorer)), None)
    booked = record_bookings(scorer) if scorer is not None else None
    run = OfflineReplay(requests, schedulers, cluster, clock, rate, admission=policy.admission,
                        exchange=job.replicas.exchange(schedulers, clock)).run()
    return run, booked


def print_terms(name: str, run: RunResult, booked: dict[str, Prediction], cluster: ClusterSpec) -> None:
    """``name``'s prediction on the engine it picked beside what happened, term by term: the prefix hit,
    the prefill (true: the lone prefill with the hit the request really got), the wait before it (true:
    TTFT − that prefill; predicted: ``wait`` + ``kv_wait``), the TTFT; over every request and over the
    tail that sets the p90 (actual TTFT ≥ the run's p80)."""
    budget = cluster.engine.max_num_batched_tokens
    models = [cluster.engine_config(e).latency_model() for e in range(cluster.engines)]
    terms = ("hit tokens", "prefill s", "wait s", "TTFT s")
    rows: list[tuple[float, list[tuple[float, float]]]] = []
    """Per request: its TTFT, and (predicted, true) per term."""
    for i, r in enumerate(run.records):
        prediction = booked.get(str(i))
        if prediction is None or r.first_token is None:
            continue
        ttft = r.first_token - r.arrival
        prefill = lone_ttft(models[r.engine], budget, r.prompt_tokens, r.cached_tokens)
        rows.append((ttft, [(prediction.cached_tokens, r.cached_tokens), (prediction.prefill, prefill),
                            (prediction.wait + prediction.kv_wait, ttft - prefill), (prediction.ttft, ttft)]))
    p80 = percentile(sorted(ttft for ttft, _ in rows), 80) or 0.0
    tail = [row for row in rows if row[0] >= p80]
    print(f"\n{name}: its predictions on the engine it picked, mean predicted / mean true "
          f"(median of predicted − true); tail = the {len(tail)} requests with TTFT ≥ the run's p80")
    print("| term | all | tail |")
    print("|---|---|---|")
    for k, label in enumerate(terms):
        cells = []
        for subset in (rows, tail):
            pairs = [pairs[k] for _, pairs in subset]
            pred = statistics.fmean(p for p, _ in pairs)
            true = statistics.fmean(t for _, t in pairs)
            diff = statistics.median(p - t for p, t in pairs)
            fmt = "{:,.0f}" if k == 0 else "{:.3f}"
            cells.append(f"{fmt.format(pred)} / {fmt.format(true)} ({'+' if diff >= 0 else ''}{fmt.format(diff)})")
        print(f"| {label} | {cells[0]} | {cells[1]} |")


@dataclass(slots=True)
class Measured:
    """One rate's runs: per policy (presets, then oracles) its run; the presets' bookings where they
    predict; the oracles' wall time and |actual − forecast| TTFT on the engine picked (sorted)."""

    rate: float
    runs: dict[str, RunResult]
    bookings: dict[str, dict[str, Prediction]]
    walls: dict[str, float]
    errors: dict[str, list[float]]


def measure(requests: Sequence[TraceRequest], cluster: ClusterSpec, rate: float, policies: Sequence[str],
            oracles: Sequence[str]) -> Measured:
    measured = Measured(rate, {}, {}, {}, {})
    for policy in policies:
        measured.runs[policy], booked = run_policy(requests, policy, cluster, rate)
        if booked is not None:
            measured.bookings[policy] = booked
    for name in oracles:
        started = time.perf_counter()
        run, oracle = run_oracle(requests, cluster, rate, name)
        measured.runs[name] = run
        measured.walls[name] = time.perf_counter() - started
        measured.errors[name] = sorted(
            abs(r.first_token - r.arrival - oracle.forecasts[str(i)][f"engine-{r.engine}"])
            for i, r in enumerate(run.records) if r.first_token is not None
        )
    return measured


def print_rate(measured: Measured, cluster: ClusterSpec, ideal: Sequence[int]) -> None:
    """One rate's table (hit, TTFT, ratios, floors), the oracles' forecast error and the term breakdowns."""
    runs = measured.runs
    p90 = {name: ttft_percentile(run, 90) for name, run in runs.items()}
    any_run = next(iter(runs.values()))
    span = any_run.records[-1].arrival - any_run.records[0].arrival
    busy = sum(lone_times(any_run, cluster, ideal)) / (cluster.engines * span)
    print(f"\n### ×{measured.rate:g}\n")
    print(f"- prefill load: every prompt prefilled alone with its ideal hit would keep the {cluster.engines} engines "
          f"busy {busy:.0%} of the {span:.1f} s the arrivals span"
          + (" (a mix: each prompt priced on its fastest kind, so a lower bound)" if cluster.profiles else ""))
    for name, errs in measured.errors.items():
        print(f"- {name} ({measured.walls[name]:.0f} s wall): |actual − forecast| TTFT on the engine picked: p50 "
              f"{percentile(errs, 50) or 0:.4f} s, p90 {percentile(errs, 90) or 0:.4f} s, max {max(errs, default=0):.4f} s")
    print()
    print("| policy | hit | TTFT p50 s | p90 s | p90 ÷ llm-d-default | p90 ÷ gie-default "
          "| floor p90, own hits s | floor p90, ideal hits s |")
    print("|---|--:|--:|--:|--:|--:|--:|--:|")
    for name, run in runs.items():
        ratios = [f"{p90[name] / p90[ref]:.3f}" if ref in p90 else "–" for ref in (LLM_D, BASELINE)]
        print(f"| {name} | {hit_ratio(run):.1%} | {ttft_percentile(run, 50):.3f} | {p90[name]:.3f} | {ratios[0]} "
              f"| {ratios[1]} | {floor_p90(run, cluster):.3f} | {floor_p90(run, cluster, ideal):.3f} |")
    if LLM_D in p90:
        print(f"\nlimit 0.85 × llm-d-default = {0.85 * p90[LLM_D]:.3f} s")
    if cluster.profiles:
        print_kinds(runs, cluster)
    for name, booked in measured.bookings.items():
        print_terms(name, runs[name], booked, cluster)


def print_kinds(runs: dict[str, RunResult], cluster: ClusterSpec) -> None:
    """On a mixed pool, per policy and engine kind: its share of the requests, of the prompt tokens it
    prefilled (uncached), and of the engines' busy seconds; and each kind's engines' mean busy fraction
    (busy seconds ÷ the run's span): is the fast kind over- or under-used?"""
    kinds = list(dict.fromkeys(cluster.profiles))
    members = {k: [e for e, p in enumerate(cluster.profiles) if p == k] for k in kinds}
    print("\nPer engine kind: share of requests / of uncached prompt tokens / of busy s; mean busy fraction per engine\n")
    print("| policy | " + " | ".join(kinds) + " |")
    print("|---|" + "---|" * len(kinds))
    for name, run in runs.items():
        done = [r for r in run.records if r.engine >= 0]
        span = max((r.finish or r.arrival for r in run.records), default=0.0) - min(r.arrival for r in run.records)
        requests = max(1, len(done))
        tokens = max(1, sum(r.prompt_tokens - r.cached_tokens for r in done))
        busy = max(1e-9, sum(run.busy))
        cells = []
        for kind in kinds:
            mine = [r for r in done if cluster.profiles[r.engine] == kind]
            kind_busy = sum(run.busy[e] for e in members[kind])
            cells.append(f"{len(mine) / requests:.0%} / {sum(r.prompt_tokens - r.cached_tokens for r in mine) / tokens:.0%}"
                         f" / {kind_busy / busy:.0%}; {kind_busy / len(members[kind]) / max(span, 1e-9):.0%}")
        print(f"| {name} | " + " | ".join(cells) + " |")


def print_spread(all_measured: Sequence[Measured], cluster: ClusterSpec, ideal: Sequence[int]) -> None:
    """Each policy's p90 at every rate (÷ llm-d-default's at that rate), and pooled: the p90 of all its
    TTFTs over the rates together, so one rate's tail luck weighs less."""
    names = list(all_measured[0].runs)
    head = " | ".join(f"×{m.rate:.5g}" for m in all_measured)
    print(f"\n### Every rate, and pooled over them\n\n| policy | {head} | pooled p90 s | pooled ÷ llm-d-default "
          "| pooled ÷ gie-default |")
    print("|---|" + "--:|" * (len(all_measured) + 3))
    pooled: dict[str, float] = {}
    for name in names:
        ttfts = sorted(r.first_token - r.arrival for m in all_measured for r in m.runs[name].records
                       if r.first_token is not None)
        pooled[name] = percentile(ttfts, 90) or 0.0
    for name in names:
        cells = []
        for m in all_measured:
            value = ttft_percentile(m.runs[name], 90)
            cells.append(f"{value:.3f} ({value / ttft_percentile(m.runs[LLM_D], 90):.2f})" if LLM_D in m.runs
                         else f"{value:.3f}")
        ratios = [f"{pooled[name] / pooled[ref]:.3f}" if ref in pooled else "–" for ref in (LLM_D, BASELINE)]
        print(f"| {name} | {' | '.join(cells)} | {pooled[name]:.3f} | {' | '.join(ratios)} |")
    floors = sorted(t for m in all_measured for t in lone_times(next(iter(m.runs.values())), cluster, ideal))
    floor = percentile(floors, 90) or 0.0
    ratios = [f"{floor / pooled[ref]:.3f}" if ref in pooled else "–" for ref in (LLM_D, BASELINE)]
    print(f"| floor, ideal hits | {' | '.join('' for _ in all_measured)} | {floor:.3f} | {' | '.join(ratios)} |")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("trace", type=Path)
    parser.add_argument("--profile", default="llama-3.2-1b-h100",
                        help="engine profile, or a mix p:4,q:4 (the ideal floor then prices each prompt on the "
                             "fastest kind)")
    parser.add_argument("--rate", type=float, required=True, help="rate scale (× the trace's speed)")
    parser.add_argument("--spread", default="1", help="also run at these multiples of --rate, e.g. 0.98,0.99,1,1.01,1.02")
    parser.add_argument("--max-requests", type=int, default=500, help="head of the trace (0 = all)")
    parser.add_argument("--policies", default=f"{LLM_D},{BASELINE},default", help="presets to run beside the oracle")
    parser.add_argument("--oracles", default=",".join((ORACLE, SOCIAL, AS_DEFAULT)),
                        help=f"oracles to run ({', '.join(ORACLES)})")
    args = parser.parse_args()
    profiles = parse_profiles(args.profile, ENGINES)
    mixed = len(set(profiles)) > 1
    cluster = ClusterSpec(engines=ENGINES, engine=EngineConfig(profile=profiles[0]), profiles=profiles if mixed else ())
    trace = read_trace(args.trace, args.max_requests or None)
    bounds = trace_bounds(trace, cluster)
    ideal = ideal_hits(trace.requests, cluster.engine.block_size)
    policies = [p for p in args.policies.split(",") if p]
    oracles = [o for o in args.oracles.split(",") if o]
    print(f"{args.trace.name}, first {len(trace.requests)} requests, {cluster.label}; "
          f"ideal hit {bounds.ideal:.1%}, capacity {bounds.capacity:.1%}")
    all_measured = []
    for factor in (float(f) for f in args.spread.split(",")):
        measured = measure(trace.requests, cluster, args.rate * factor, policies, oracles)
        print_rate(measured, cluster, ideal)
        all_measured.append(measured)
    if len(all_measured) > 1:
        print_spread(all_measured, cluster, ideal)
    return 0


if __name__ == "__main__":
    sys.exit(main())
