"""Two active-active picker replicas: what their separate prefix views cost, and what sharing buys.

Drives simulated vLLM engines (``epp.engine.EngineCore``) in virtual time with N schedulers that take
requests in turn (as a load balancer in front of picker replicas would), all reading one datastore
whose engine metrics are exact at every arrival. Each replica runs the ``gie-default`` policy (queue
2, kv-cache 2, prefix 3) with one of these prefix views:

* ``own``     — each replica's approximate index learns only its own picks (today's behaviour);
* ``shared``  — one approximate index for all replicas: what ``SharedPrefixIndex`` converges to
                through Redis, without its few milliseconds of replication lag;
* ``precise`` — each replica's ``precise-prefix-cache-producer`` ingests every engine's KV events
                (through the real msgpack wire format), so all replicas see what engines cached.

Workload: ``--groups`` tenants, each with a ``--prefix-tokens`` system prompt, requests = a tenant's
prompt + a unique ``--suffix-tokens`` question, Poisson arrivals at ``--rate``; engines hold
``--kv-blocks`` blocks each, fewer than all tenants' prompts, so where a tenant's requests land matters.
Prints the prefix-cache hit ratio (cached prompt tokens / prompt tokens, as engines count them) and
TTFT per configuration.

    python bench/replicas.py [--engines 4] [--rate 30] [--duration 60] [--seed 1]
"""

from __future__ import annotations

import argparse
import heapq
import random
import statistics
import time
from dataclasses import dataclass

from epp._util.clock import VirtualClock
from epp.config import load_scheduler_text
from epp.datastore import Datastore, Endpoint, EndpointMetrics
from epp.engine.config import EngineConfig
from epp.engine.core import EngineCore
from epp.engine.request import EngineRequest
from epp.kvevents.decode import decode_message
from epp.request import LLMRequest, RequestKind
from epp.scheduling.plugins.scorers.prefix_cache import PrefixCacheScorer
from epp.scheduling.prefix.precise_producer import PrecisePrefixCacheProducer
from epp.scheduling.scheduler import Scheduler
from epp.sim.kv_events import encode_batch

MODEL = "meta-llama/Llama-3.1-8B-Instruct"
_HEADER = "apiVersion: llm-d.ai/v1alpha1\nkind: EndpointPickerConfig\nplugins:\n"
_PROFILE = (
    "schedulingProfiles:\n- name: default\n  plugins:\n  - {pluginRef: queue-scorer, weight: 2}\n"
    "  - {pluginRef: kv-cache-utilization-scorer, weight: 2}\n  - {pluginRef: prefix-cache-scorer, weight: 3}\n"
    "  - {pluginRef: max-score-picker}\n"
)
_COMMON = "- {type: queue-scorer}\n- {type: kv-cache-utilization-scorer}\n- {type: max-score-picker}\n"
APPROX = _HEADER + _COMMON + "- {type: prefix-cache-scorer}\n" + _PROFILE
PRECISE = (
    _HEADER + _COMMON + "- {type: precise-prefix-cache-producer, name: kv}\n"
    "- {type: prefix-cache-scorer, parameters: {prefixMatchInfoProducerName: kv}}\n" + _PROFILE
)


@dataclass(frozen=True, slots=True)
class Arrival:
    time: float
    tokens: list[int]
    max_tokens: int


@dataclass(frozen=True, slots=True)
class Outcome:
    hit_ratio: float
    ttft_mean: float
    ttft_p50: float
    ttft_p90: float
    completed: int


def workload(args: argparse.Namespace) -> list[Arrival]:
    rng = random.Random(args.seed)
    prefixes = [[rng.randrange(50_000) for _ in range(args.prefix_tokens)] for _ in range(args.groups)]
    weights = [1 / (g + 1) ** 0.6 for g in range(args.groups)]  # a few big tenants, a long tail
    out, t = [], 0.0
    while True:
        t += rng.expovariate(args.rate)
        if t >= args.duration:
            return out
        group = rng.choices(range(args.groups), weights)[0]
        suffix = [rng.randrange(50_000) for _ in range(args.suffix_tokens)]
        out.append(Arrival(t, prefixes[group] + suffix, args.output_tokens))


def replicas(view: str, n: int, clock: VirtualClock, seed: int) -> list[Scheduler]:
    made = [load_scheduler_text(PRECISE if view == "precise" else APPROX, clock=clock, rng=random.Random(seed + i))
            for i in range(n)]  # fmt: skip
    if view == "shared":
        first = next(p for p in made[0].plugins if isinstance(p, PrefixCacheScorer)).producer.index
        for scheduler in made[1:]:
            next(p for p in scheduler.plugins if isinstance(p, PrefixCacheScorer)).producer.index = first
    return made


def run(view: str, n: int, arrivals: list[Arrival], args: argparse.Namespace) -> Outcome:
    clock = VirtualClock()
    datastore = Datastore(clock, staleness_threshold=1e9)
    engines: dict[str, EngineCore] = {}
    for i in range(args.engines):
        name = f"engine-{i}"
        engines[name] = EngineCore(EngineConfig(model=MODEL, num_gpu_blocks=args.kv_blocks, enable_kv_events=True, seed=i))
        datastore.upsert(Endpoint(name, "127.0.0.1", 8000 + i))
    schedulers = replicas(view, n, clock, args.seed)
    for scheduler in schedulers:
        scheduler.attach(datastore)
    producers = [p for s in schedulers for p in s.plugins if isinstance(p, PrecisePrefixCacheProducer)]
    seqs = dict.fromkeys(engines, 0)
    busy: list[tuple[float, str]] = []  # (step end, engine)
    pending: dict[str, list] = {}  # engine → outputs delivered at its step end
    ttfts: list[float] = []
    prompt_tokens = cached_tokens = 0

    def start_step(name: str, now: float, horizon: float) -> None:
        out = engines[name].step(now, horizon)
        events = engines[name].take_kv_events()
        if events and producers:
            batch = decode_message([f"kv@{name}@{MODEL}".encode(), seqs[name].to_bytes(8, "big"), encode_batch(now, events, {})])
            seqs[name] += 1
            for producer in producers:
                producer.precise.ingest(name, batch.seq, batch.events, MODEL)
        if out.duration > 0:
            pending[name] = out.outputs
            heapq.heappush(busy, (now + out.duration, name))

    i = 0
    while i < len(arrivals) or busy:
        next_arrival = arrivals[i].time if i < len(arrivals) else float("inf")
        if busy and busy[0][0] <= next_arrival:
            end, name = heapq.heappop(busy)
            clock.advance_to(end)
            for o in pending.pop(name):
                if o.finished:
                    assert o.first_token_time is not None
                    ttfts.append(o.first_token_time - o.arrival_time)
                    prompt_tokens += o.num_prompt_tokens
                    cached_tokens += o.num_cached_tokens
                    datastore.request_finished(name, o.num_prompt_tokens)
            if engines[name].has_unfinished_requests():
                start_step(name, end, next_arrival)
            continue
        arrival = arrivals[i]
        clock.advance_to(arrival.time)
        for name, core in engines.items():
            s = core.stats()
            datastore.update_metrics(name, EndpointMetrics(clock.now(), waiting=s.num_waiting, running=s.num_running,
                                                           kv_usage=s.kv_usage, block_size=s.block_size,
                                                           num_gpu_blocks=s.num_gpu_blocks))  # fmt: skip
        request = LLMRequest(f"r{i}", RequestKind.COMPLETIONS, MODEL, prompt_token_ids=arrival.tokens)
        result = schedulers[i % n].schedule(request, datastore.endpoints())
        name = result.endpoints[0].name
        datastore.request_started(name, len(arrival.tokens))
        engines[name].add_request(EngineRequest(f"r{i}", arrival.tokens, arrival.max_tokens, arrival.time))
        i += 1
        if not any(e == name for _, e in busy):
            start_step(name, arrival.time, arrivals[i].time if i < len(arrivals) else float("inf"))
    ttfts.sort()
    return Outcome(cached_tokens / max(1, prompt_tokens), statistics.fmean(ttfts), ttfts[len(ttfts) // 2],
                   ttfts[int(len(ttfts) * 0.9)], len(ttfts))  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--engines", type=int, default=4)
    parser.add_argument("--replicas", type=int, default=2)
    parser.add_argument("--rate", type=float, default=30.0, help="requests per second")
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of arrivals")
    parser.add_argument("--groups", type=int, default=48, help="tenants (distinct system prompts)")
    parser.add_argument("--prefix-tokens", type=int, default=2048)
    parser.add_argument("--suffix-tokens", type=int, default=128)
    parser.add_argument("--output-tokens", type=int, default=64)
    parser.add_argument("--kv-blocks", type=int, default=3000, help="KV blocks of 16 tokens per engine")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    arrivals = workload(args)
    print(f"{len(arrivals)} requests, {args.engines} engines x {args.kv_blocks} blocks, {args.groups} tenants "
          f"x {args.prefix_tokens}-token prompts, {args.rate}/s, seed {args.seed}")  # fmt: skip
    rows = [("1 replica", 1, "own"), (f"{args.replicas} replicas, own index", args.replicas, "own"),
            (f"{args.replicas} replicas, shared index", args.replicas, "shared"),
            (f"{args.replicas} replicas, precise (KV events)", args.replicas, "precise")]  # fmt: skip
    base: Outcome | None = None
    print(f"{'configuration':38} {'hit ratio':>9} {'TTFT mean':>10} {'p50':>8} {'p90':>8} {'vs 1 replica':>13} {'wall':>6}")
    for label, n, view in rows:
        started = time.perf_counter()
        o = run(view, n, arrivals, args)
        base = base or o
        print(f"{label:38} {o.hit_ratio:9.3f} {o.ttft_mean * 1e3:8.1f}ms {o.ttft_p50 * 1e3:6.1f}ms "
              f"{o.ttft_p90 * 1e3:6.1f}ms {o.ttft_mean / base.ttft_mean:12.2f}x {time.perf_counter() - started:5.1f}s")  # fmt: skip


if __name__ == "__main__":
    main()
