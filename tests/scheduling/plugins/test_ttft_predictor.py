"""``ttft-predictor-scorer`` in configs and in scheduling cycles: bursts, ties, hooks, cache affinity."""

from __future__ import annotations

import math
import random
from collections import Counter

import pytest

from epp._util.clock import VirtualClock
from epp._util.hashing import chain_hashes, seed_hash, token_blocks
from epp.config import ConfigError, load_scheduler, load_scheduler_text
from epp.datastore import Datastore, EndpointMetrics, EndpointState
from epp.contracts.kv_events import Stored
from epp.request import LLMRequest, RequestKind
from epp.scheduling.framework import CycleState
from epp.scheduling.plugins.scorers.ttft_predictor import TTFTPredictorScorer
from epp.scheduling.prefix.producer import ApproxPrefixCacheProducer
from epp.config.presets import DEFAULT_PRESET
from epp.scheduling.scheduler import Scheduler
from epp.scheduling.ttft import EndpointLedger, Flight, PrefixRecency
from epp.scheduling.ttft.learn import LatencyEstimate
from tests.conftest import make_state

CONFIG = """\
apiVersion: llm-d.ai/v1alpha1
kind: EndpointPickerConfig
plugins:
- {type: approx-prefix-cache-producer, parameters: {maxPrefixTokensToMatch: 65536}}
- type: ttft-predictor-scorer
  parameters: {kvCapacityTokens: 300000, blockSize: 16, maxNumBatchedTokens: 4096, forgettingFactor: 0.98,
               tieTolerance: 1ms, workWeight: 2, requestTimeout: 5m, defaultOutputTokens: 100}
- {type: max-score-picker}
"""


def build(seed: int = 0, text: str | None = None) -> tuple[Scheduler, TTFTPredictorScorer, VirtualClock]:
    clock = VirtualClock(10.0)
    scheduler = load_scheduler_text(text, clock=clock, rng=random.Random(seed)) if text else load_scheduler(
        DEFAULT_PRESET, clock=clock, rng=random.Random(seed))
    scorer = next(p for p in scheduler.plugins if isinstance(p, TTFTPredictorScorer))
    return scheduler, scorer, clock


def pool(n: int, clock: VirtualClock) -> list[EndpointState]:
    return [
        make_state(f"e{i}", address=f"10.0.0.{i + 1}",
                   metrics=EndpointMetrics(scraped_at=clock.now(), block_size=16, num_gpu_blocks=29202))
        for i in range(n)
    ]


def request(rid: str, tokens: list[int], max_tokens: int = 64) -> LLMRequest:
    return LLMRequest(request_id=rid, kind=RequestKind.COMPLETIONS, model="m", prompt_token_ids=tokens,
                      max_tokens=max_tokens, stream=True)


def test_config_parameters_are_typed_and_the_configured_producer_is_shared() -> None:
    scheduler, scorer, _ = build(text=CONFIG)
    p = scorer.params
    assert (p.kv_capacity_tokens, p.max_num_batched_tokens, p.forgetting_factor, p.tie_tolerance, p.work_weight) == (
        300000, 4096, 0.98, 0.001, 2.0)
    assert p.request_timeout == 300.0 and p.default_output_tokens == 100
    assert p.evidence_half_life == 16 and scorer.learner.pool.half_life == 16
    producers = [q for q in scheduler.plugins if isinstance(q, ApproxPrefixCacheProducer)]
    assert producers == [scorer.producer]  # one producer: the prompt is hashed once per cycle
    assert scorer in scheduler.pre_request_plugins
    assert scorer in scheduler.response_started_plugins and scorer in scheduler.response_complete_plugins


@pytest.mark.parametrize(
    ("params", "path"),
    [
        ("{profile: llama-3.1-8b-h100}", "plugins[0].parameters.profile"),  # learned, no longer configured
        ("{forgettingFactor: 1.5}", "plugins[0].parameters.forgettingFactor"),
        ("{workWeight: -1}", "plugins[0].parameters.workWeight"),
        ("{evidenceHalfLife: -1}", "plugins[0].parameters.evidenceHalfLife"),
        ("{tieTolerance: 0}", "plugins[0].parameters.tieTolerance"),
        ("{tieRelative: 1}", "plugins[0].parameters.tieRelative"),
        ("{maxNumBatchedTokens: 0}", "plugins[0].parameters.maxNumBatchedTokens"),
        ("{queueThreshold: 3}", "plugins[0].parameters.queueThreshold"),
    ],
)
def test_bad_parameters_name_their_field(params: str, path: str) -> None:
    text = f"apiVersion: llm-d.ai/v1alpha1\nkind: EndpointPickerConfig\nplugins:\n- {{type: ttft-predictor-scorer, parameters: {params}}}\n"
    with pytest.raises(ConfigError) as err:
        load_scheduler_text(text)
    assert err.value.path == path


def test_the_eviction_estimate_is_per_endpoint_off_only_where_the_precise_view_is_exact() -> None:
    text = CONFIG.replace(
        "- {type: approx-prefix-cache-producer, parameters: {maxPrefixTokensToMatch: 65536}}",
        "- {type: precise-prefix-cache-producer, name: kv, parameters: {mode: bind, bindEndpoint: 'tcp://127.0.0.1:0'}}",
    )
    _, scorer, _ = build(text=text)
    assert scorer.producer.typed_name.type == "precise-prefix-cache-producer"
    precise = scorer.producer.precise
    toks = list(range(16))
    key = chain_hashes(token_blocks(toks, 16), seed_hash("m"))
    precise.ingest("live", 0, [], "m")  # a feed in order, but its keys are not yet known to agree
    assert scorer.estimates_eviction("live") is True
    precise.routed("live", "r1", key, "m")
    precise.ingest("live", 1, [Stored(tuple(key), None, tuple(toks), 16, None)], "m")
    assert precise.agreed("live") and scorer.estimates_eviction("live") is False  # the engine's cache
    assert scorer.estimates_eviction("no-events") is True  # matched in the approximate fallback
    _, approx, _ = build(text=CONFIG)
    assert approx.estimates_eviction("live") is True
    _, forced, _ = build(text=CONFIG.replace("defaultOutputTokens: 100}", "defaultOutputTokens: 100, estimateEviction: false}"))
    assert forced.estimates_eviction("no-events") is False


def test_the_default_preset_is_the_ttft_predictor_and_creates_no_second_producer() -> None:
    assert DEFAULT_PRESET == "default"
    scheduler, scorer, _ = build()
    profile = scheduler.profiles["default"]
    assert [ws.scorer for ws in profile.scorers] == [scorer]
    assert sum(isinstance(q, ApproxPrefixCacheProducer) for q in scheduler.plugins) == 1


def test_a_burst_on_an_idle_pool_spreads_instead_of_piling_up() -> None:
    scheduler, _, clock = build()
    endpoints = pool(8, clock)
    picked = [scheduler.schedule(request(f"r{i}", [7_000_000 + i * 5000 + j for j in range(4000)]), endpoints)
              .endpoints[0].name for i in range(8)]
    assert sorted(picked) == sorted(e.name for e in endpoints)  # each pick is booked before the next


def test_ties_are_broken_at_random() -> None:
    firsts = Counter()
    for seed in range(40):
        scheduler, _, clock = build(seed)
        firsts[scheduler.schedule(request("r", list(range(1000))), pool(4, clock)).endpoints[0].name] += 1
    assert set(firsts) == {"e0", "e1", "e2", "e3"}


@pytest.mark.parametrize("seed", range(3))
def test_a_shared_system_prompt_does_not_lock_a_light_pool_onto_the_first_endpoints(seed: int) -> None:
    """Every request starts with the same 512-token system prompt and the pool is idle at each pick. The
    endpoints that served once hold the prompt, so a new conversation costs a little less there (its
    prefill and the work charge on it, ~2.5 % of the cost here): without the relative tie the first endpoint
    kept every request and the others, never served, never got the prompt. Within ``tieRelative`` of the
    cheapest the pick is random, so the pool fills; a conversation's own follow-up still stays."""
    scheduler, _, clock = build(seed)
    endpoints = pool(8, clock)
    system = list(range(512))
    served: Counter[str] = Counter()
    picks: list[str] = []
    for i in range(60):
        req = request(f"r{i}", system + [1_000_000 + i * 20_000 + j for j in range(20_000)])
        chosen = scheduler.schedule(req, endpoints).endpoints[0]
        served[chosen.name] += 1
        picks.append(chosen.name)
        clock.advance(0.3)
        scheduler.response_started(req, chosen)
        clock.advance(0.3)
        scheduler.response_complete(req, chosen, {"completion_tokens": 64})
        clock.advance(1.0)
    assert len(served) == 8 and max(served.values()) <= 20, served
    follow_up = request("r0-2", system + [1_000_000 + j for j in range(20_000)] + list(range(3_000_000, 3_000_100)))
    assert scheduler.schedule(follow_up, endpoints).endpoints[0].name == picks[0]


def test_the_work_weight_grows_with_the_mean_queue() -> None:
    _, scorer, clock = build()
    endpoints = pool(4, clock)
    assert scorer.work_weight(endpoints, clock.now()) == 2.0
    for i in range(8):  # 8 queued requests over 4 endpoints: a mean queue of 2
        scorer.ledgers[endpoints[i % 2].name].routed(f"q{i}", _flight(clock.now(), 1.0))
    assert scorer.work_weight(endpoints, clock.now()) == 2.0 * 3


def test_a_warm_endpoint_keeps_a_follow_up_while_idle() -> None:
    scheduler, _, clock = build()
    endpoints = pool(2, clock)
    doc = list(range(30_000))
    first = scheduler.schedule(request("first", doc + [1]), endpoints).endpoints[0]
    scheduler.response_started(request("first", doc + [1]), first)
    scheduler.response_complete(request("first", doc + [1]), first, {})
    assert scheduler.schedule(request("again", doc + [2]), endpoints).endpoints[0] is first


@pytest.mark.parametrize(("congested", "stays"), [(False, False), (True, True)])
def test_a_long_queue_on_the_warm_endpoint_moves_a_request_unless_every_queue_is_long(
    congested: bool, stays: bool
) -> None:
    """10 s of work queued on the warm endpoint outweighs the ~1.2 s a 30K-token hit saves (at the
    learner's prior), ×(1 + λ), on an idle pool; when every endpoint has a queue, λ grows (2 × (1 + 6.5))
    and the hit (less work for everyone) wins."""
    scheduler, scorer, clock = build()
    endpoints = pool(2, clock)
    doc = list(range(30_000))
    warm = scheduler.schedule(request("first", doc + [1]), endpoints).endpoints[0]
    scheduler.response_complete(request("first", doc + [1]), warm, {})
    scorer.ledgers[warm.name].routed("long", _flight(clock.now(), 10.0))
    if congested:
        for e in endpoints:
            for i in range(6):
                scorer.ledgers[e.name].routed(f"{e.name}-{i}", _flight(clock.now(), 0.1))
    picked = scheduler.schedule(request("again", doc + [2]), endpoints).endpoints[0]
    assert (picked is warm) == stays


@pytest.mark.parametrize(("queued", "stays"), [(6.0, True), (10.0, False)])
def test_leaving_a_warm_prefix_is_charged_the_copy_it_strands(queued: float, stays: bool) -> None:
    """A cold idle endpoint (prefill ~1.23 s at the learner's prior) against the warm one with ``queued``
    seconds ahead, λ = 2 × (1 + 1/2): on TTFT + λ × prefill alone 6 s of queue would move the follow-up
    (1.23 × 4 < 6); the prefix it strands on the warm endpoint is work lost a second time (+ λ × 1.22 s),
    so it moves only past ~8.6 s."""
    scheduler, scorer, clock = build()
    endpoints = pool(2, clock)
    doc = list(range(30_000))
    warm = scheduler.schedule(request("first", doc + [1]), endpoints).endpoints[0]
    scheduler.response_complete(request("first", doc + [1]), warm, {})
    scorer.ledgers[warm.name].routed("long", _flight(clock.now(), queued))
    picked = scheduler.schedule(request("again", doc + [2]), endpoints).endpoints[0]
    assert (picked is warm) == stays


def test_hooks_move_a_request_from_prefill_to_decode_to_gone() -> None:
    scheduler, scorer, clock = build()
    endpoints = pool(1, clock)
    req = request("r", list(range(8000)))
    e = scheduler.schedule(req, endpoints).endpoints[0]
    ledger = scorer.ledgers[e.name]
    assert list(ledger.pending) == ["r"] and ledger.backlog(clock.now()) > 0.2
    clock.advance(0.1)
    scheduler.response_started(req, e)
    assert list(ledger.pending) == [] and list(ledger.decoding) == ["r"] and ledger.backlog(clock.now()) == 0.0
    scheduler.response_complete(req, e, {"prompt_tokens": 8000})
    assert len(ledger) == 0 and ledger.context_tokens == 0


def test_removed_endpoints_are_forgotten() -> None:
    scheduler, scorer, clock = build()
    store = Datastore(clock)
    endpoints = pool(2, clock)
    for e in endpoints:
        store.upsert(e.endpoint)
    scheduler.attach(store)
    scheduler.schedule(request("r", list(range(100))), endpoints)
    assert scorer.ledgers
    for e in endpoints:
        store.remove(e.name)
    assert scorer.ledgers == {} and scorer.recency == {}


def test_scores_are_best_over_predicted_within_zero_and_one() -> None:
    _, scorer, clock = build()
    endpoints = pool(3, clock)
    scorer.ledgers["e1"] = _ledger(clock.now(), 0.5)
    scores = scorer.score(CycleState(), request("r", list(range(2000))), endpoints)
    idle = scorer.predict(CycleState(), request("r", list(range(2000))), endpoints[:1])[0]
    best = idle.ttft + scorer.work_weight(endpoints, clock.now()) * idle.prefill
    assert scores[0] == scores[2] == 1.0
    assert scores[1] == pytest.approx(best / (best + 0.5), abs=0.01)


def test_with_the_miss_charge_a_prompt_no_endpoint_holds_is_charged_only_its_ttft() -> None:
    _, scorer, clock = build(text=CONFIG.replace("defaultOutputTokens: 100", "defaultOutputTokens: 100, workCharge: miss"))
    endpoints = pool(3, clock)
    scorer.ledgers["e1"] = _ledger(clock.now(), 0.5)
    scores = scorer.score(CycleState(), request("r", list(range(2000))), endpoints)
    idle = scorer.predict(CycleState(), request("r", list(range(2000))), endpoints[:1])[0]
    best = idle.ttft  # no endpoint holds any of the prompt: no miss to charge, the cost is the TTFT
    assert scores[0] == scores[2] == 1.0
    assert scores[1] == pytest.approx(best / (best + 0.5), abs=0.01)


def _flight(now: float, seconds: float) -> Flight:
    return Flight(now, seconds, seconds, 4000, 64)


def _ledger(now: float, seconds: float) -> EndpointLedger:
    ledger = EndpointLedger()
    ledger.routed("x", _flight(now, seconds))
    return ledger


def _scores_one_endpoint_at_a_time(scorer: TTFTPredictorScorer, cycle: CycleState, req: LLMRequest,
                                   endpoints: list[EndpointState]) -> list[float]:
    """The scorer as it was before predictions were vectorised: the scalar predictor per endpoint."""
    info, hits = scorer.producer.match(cycle, req, endpoints)
    now = scorer.clock.now()
    scorer.observe_scrapes(endpoints, [scorer._ledger(e.name) for e in endpoints])
    predictions = []
    for e, matched in zip(endpoints, hits):
        ledger = scorer._ledger(e.name)
        recency = scorer.recency.get(e.name) or PrefixRecency()
        for request_id in ledger.expire(now - scorer.params.request_timeout):
            recency.release(request_id)
        since = recency.written_since(info.hashes, matched) if scorer.estimates_eviction(e.name) else None
        predictions.append(scorer.predictor.predictor.predict(
            e, ledger, req.estimated_prompt_tokens, matched * info.block_tokens, since, now))
    queued = sum(scorer._ledger(e.name).queued(now) for e in endpoints) / len(endpoints)
    w, tol = scorer.params.work_weight * (1 + queued), scorer.params.tie_tolerance
    most = max(p.cached_tokens for p in predictions)
    warm = [(p.cold_prefill - p.prefill) / max(p.cold_prefill, 1e-12) for p in predictions if p.cached_tokens == most]
    ref = [p for p in predictions if p.cached_tokens == most][warm.index(min(warm))]
    stranded = [min(warm) * max(p.cold_prefill, ref.cold_prefill) * (most - p.cached_tokens) / most if most else 0.0
                for p in predictions]
    charge = scorer.params.work_charge
    if charge == "prefill":  # the whole prefill, + stranded
        charged = [s + p.prefill for p, s in zip(predictions, stranded)]
    else:  # the prefill the warmest hit would have saved, + stranded; capped: + the rest, up to 1.25 × the least
        added = [0.0 if p.cached_tokens == most else max(0.0, p.cold_prefill * (min(warm) - 1.0) + p.prefill)
                 for p in predictions]
        charged = [s + a for s, a in zip(stranded, added)]
        if charge == "capped":
            base = [p.prefill - a for p, a in zip(predictions, added)]
            charged = [c + min(b, 1.25 * min(base)) for c, b in zip(charged, base)]
    costs = [p.ttft + w * c for p, c in zip(predictions, charged)]
    tie = min(costs) * (1 + scorer.params.tie_relative / (1 + 4 * queued))  # within it: the cheapest's cost
    rounded = [math.ceil((min(costs) if c <= tie else c) / tol) * tol or tol for c in costs]
    return [min(rounded) / r for r in rounded]


@pytest.mark.parametrize("charge", ["capped", "miss", "prefill"])
@pytest.mark.parametrize("seed", range(3))
def test_scores_equal_the_one_endpoint_at_a_time_scorer_through_random_traffic(seed: int, charge: str) -> None:
    """Every pick of a random run (shared prefixes, scrapes, stale endpoints, first tokens, completions,
    expiry) is scored exactly as the scalar predictor scores it: no decision changed by vectorising."""
    rng = random.Random(seed)
    scheduler, scorer, clock = build(seed, text=CONFIG.replace("requestTimeout: 5m", "requestTimeout: 3s").replace(
        "defaultOutputTokens: 100", f"defaultOutputTokens: 100, workCharge: {charge}"))
    endpoints = pool(12, clock)
    prefixes = [[rng.randrange(50_000) for _ in range(rng.randrange(16, 3000))] for _ in range(5)]
    in_flight: list[tuple[LLMRequest, EndpointState]] = []
    for i in range(150):
        clock.advance(rng.uniform(0, 0.2))
        for e in rng.sample(endpoints, 2):
            e.metrics = EndpointMetrics(scraped_at=clock.now(), running=rng.randrange(40), waiting=rng.randrange(4),
                                        kv_usage=rng.random(), block_size=16, num_gpu_blocks=rng.choice([2000, 29202]))
            e.stale = rng.random() < 0.1
        req = request(f"r{i}", rng.choice(prefixes) + [rng.randrange(50_000) for _ in range(rng.randrange(1, 400))],
                      max_tokens=rng.choice([0, 64, 900]))
        candidates = rng.sample(endpoints, rng.randrange(1, len(endpoints) + 1))
        cycle = CycleState()
        expected = _scores_one_endpoint_at_a_time(scorer, cycle, req, candidates)
        assert scorer.score(cycle, req, candidates) == expected
        in_flight.append((req, scheduler.schedule(req, candidates).endpoints[0]))
        for _ in range(rng.randrange(3)):
            if in_flight and rng.random() < 0.7:
                done, served = in_flight.pop(rng.randrange(len(in_flight)))
                if rng.random() < 0.8:
                    scheduler.response_started(done, served)
                clock.advance(rng.uniform(0, 0.05))
                usage = {"completion_tokens": rng.randrange(1, 100)} if rng.random() < 0.7 else {}  # else failed
                scheduler.response_complete(done, served, usage)
    assert sum(e.observations for e in scorer.learner.endpoints.values()) > 10  # the coefficients moved too


def test_a_replica_sees_the_prefill_another_replica_started_and_goes_elsewhere() -> None:
    """Two active-active pickers share the engines' scrapes but not their ledgers. Replica B's long
    prompt prefilling on e0 shows up in A's next scrape only as one more *running* sequence; A must
    count it as work ahead of its request (a cold prefill of a typical pick), not as an idle engine."""
    clock = VirtualClock(10.0)
    a, b = (load_scheduler(DEFAULT_PRESET, clock=clock, rng=random.Random(s)) for s in (0, 1))
    scorer_a = next(p for p in a.plugins if isinstance(p, TTFTPredictorScorer))
    views = [pool(2, clock), pool(2, clock)]  # each replica's datastore states
    prompt = list(range(8000))
    first = request("a1", prompt)
    served = a.schedule(first, views[0]).endpoints[0]
    a.response_started(first, served)
    a.response_complete(first, served, {})
    b.schedule(request("b1", [7] * 8000), [views[1][0]])  # B sends e0 a long prompt
    clock.advance(0.05)
    for view in views:  # the next scrape: e0 runs B's request, e1 is idle
        view[0].metrics = EndpointMetrics(scraped_at=clock.now(), running=1, block_size=16, num_gpu_blocks=29202)
        view[1].metrics = EndpointMetrics(scraped_at=clock.now(), block_size=16, num_gpu_blocks=29202)
    e0, e1 = scorer_a.predict(CycleState(), request("a2", [9] * 8000), views[0])
    assert e0.wait >= scorer_a.typical_cold_seconds > 0.1
    assert e1.wait < 0.01
    assert [a.schedule(request(f"a{i}", [i] * 8000), views[0]).endpoints[0].name for i in range(3, 6)][0] == "e1"


@pytest.mark.parametrize(("charge", "to_slow"), [("capped", True), ("miss", True), ("prefill", False)])
def test_on_a_mixed_pool_a_cold_prompt_goes_to_the_idle_slow_engine_when_it_answers_first(charge: str, to_slow: bool) -> None:
    """A 20K-token prompt nobody holds: a fast engine (1B-like, 5.6 ms per 1K tokens) with 0.8 s queued, or
    an idle one 5.4× slower per token. The slow one answers first (~0.61 s against ~0.91 s); charged
    λ × its whole prefill (λ = 2 × 1.5, ``prefill``) it loses anyway, as long prompts queued behind the 1B
    engines on the 4 + 4 mix; charged only up to 1.25 × the fast one's (``capped``) or not at all
    (``miss``), it takes the prompt."""
    scheduler, scorer, clock = build(text=CONFIG.replace("defaultOutputTokens: 100", f"defaultOutputTokens: 100, workCharge: {charge}"))
    fast, slow = pool(2, clock)
    scorer.learner[fast.name].adopt(LatencyEstimate(0.003, 0.0056, 0.00023, 0.004, 0.0, 0.0))
    scorer.learner[slow.name].adopt(LatencyEstimate(0.008, 0.0304, 0.00071, 0.010, 0.0, 0.0))
    scorer._ledger(fast.name).routed("queued", _flight(clock.now(), 0.8))
    picked = scheduler.schedule(request("cold", list(range(20_000))), [fast, slow]).endpoints[0]
    assert (picked is slow) == to_slow
