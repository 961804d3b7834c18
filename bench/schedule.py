"""Pick latency of the scheduler in-process, and the prefix index's bytes per cached entry.

Runs ``gie-default`` (queue ×2, kv-cache ×2, prefix ×3, max-score; ``--preset`` picks another preset
or an EndpointPickerConfig file; repeat it to compare policies side by side, rounds interleaved) over
8/64/256 endpoints with fresh metrics, for 1K- and 32K-token text prompts (4 bytes per token) drawn from a
pool of shared prefixes so the prefix index sees hits and misses. Each request completes (response
hooks called) 64 picks after it was scheduled, so plugins that track requests in flight stay at a
steady state; streamed, 1 ms of virtual time apart, each completing with usage, so a plugin that learns
from responses (the default's latency learner) learns during the run. Times ``Scheduler.schedule`` end to end, PreRequest index update included, and prints p50/p99 in microseconds, best of ``--rounds`` rounds (the machine is shared: the
best round is the one least disturbed by other tenants; all rounds run identical work). Then fills a ``BlockIndex`` to capacity and reports its
bytes per live (block, endpoint) entry, from ``nbytes`` and from tracemalloc.

``--preset`` may be repeated (a preset or a config file; policies are timed interleaved).
``--telemetry`` instead compares a plain scheduler with one instrumented by epp's telemetry
(``Telemetry.instrument``: every plugin call timed for ``plugin_duration_seconds``, prefix matches
observed), fed the same picks alternately so both see the same machine load, and prints the cpu p50s
and the median per-pick difference.

    python bench/schedule.py [--picks 2000] [--rounds 3] [--seed 1] [--preset gie-default ...] [--telemetry]
"""

from __future__ import annotations

import argparse
import random
import statistics
import time
import tracemalloc

from epp._util.clock import VirtualClock
from epp.datastore import Datastore, Endpoint, EndpointMetrics, EndpointState
from epp.request import LLMRequest, RequestKind
from epp.scheduling.prefix.index import BlockIndex
from epp.config import load_scheduler
from epp.scheduling.scheduler import Scheduler
from epp.telemetry import Telemetry


def _states(n: int, rng: random.Random) -> list[EndpointState]:
    out = []
    for i in range(n):
        metrics = EndpointMetrics(scraped_at=0.0, waiting=rng.randrange(8), running=rng.randrange(32), kv_usage=rng.random())
        out.append(EndpointState(Endpoint(f"pod-{i}-rank-0", f"10.0.{i // 250}.{i % 250 + 1}", 8000), metrics, stale=False))
    return out


_PRINTABLE = bytes(32 + b % 95 for b in range(256))


def _text(n: int, rng: random.Random) -> bytes:
    """``n`` random printable ASCII bytes: prompts arrive as JSON text, so they are valid UTF-8
    (random binary would make a tokenizing producer decode thousands of U+FFFD replacements)."""
    return rng.randbytes(n).translate(_PRINTABLE)


def _prompts(tokens: int, rng: random.Random, shared: int = 32) -> list[bytes]:
    """Prompts sharing one of ``shared`` system prefixes (half the prompt), then a unique tail."""
    prefixes = [_text(tokens * 2, rng) for _ in range(shared)]
    return [rng.choice(prefixes) + _text(tokens * 2, rng) for _ in range(256)]


IN_FLIGHT = 64
USAGE = {"completion_tokens": 16}


def pick_latency(endpoints: int, tokens: int, picks: int, seed: int, preset: str = "gie-default") -> tuple[float, float, float, float]:
    """(wall p50, wall p99, thread-CPU p50, thread-CPU p99) in µs. CPU time leaves out the time the
    process sat preempted by other tenants, so it is the cost of the code itself."""
    rng = random.Random(seed)
    clock = VirtualClock()
    scheduler = load_scheduler(preset, clock=clock, rng=random.Random(seed))
    states = _states(endpoints, rng)
    datastore = Datastore(VirtualClock())
    scheduler.attach(datastore)  # as serve does: the prefix index reserves endpoint slots at discovery
    for state in states:
        datastore.upsert(state.endpoint)
    prompts = _prompts(tokens, rng)
    wall, cpu = [], []
    in_flight: list[tuple[LLMRequest, EndpointState]] = []
    for i in range(picks + 200):
        request = LLMRequest(f"r{i}", RequestKind.COMPLETIONS, "m", prompt_bytes=prompts[i % len(prompts)], stream=True)
        clock.advance(0.001)  # 1,000 picks/s: requests end with a duration a latency learner can use
        t0, c0 = time.perf_counter(), time.thread_time()
        picked = scheduler.schedule(request, states).endpoints[0]
        if i >= 200:  # warm-up: let the index fill a little first
            wall.append(time.perf_counter() - t0)
            cpu.append(time.thread_time() - c0)
        in_flight.append((request, picked))
        if len(in_flight) > IN_FLIGHT:
            done, served = in_flight.pop(0)
            scheduler.response_started(done, served)
            scheduler.response_complete(done, served, USAGE)  # a success: learners learn from it
    wall.sort()
    cpu.sort()
    p50, p99 = len(wall) // 2, int(len(wall) * 0.99)
    return wall[p50] * 1e6, wall[p99] * 1e6, cpu[p50] * 1e6, cpu[p99] * 1e6


def index_bytes_per_entry(endpoints: int, capacity: int, seed: int) -> tuple[float, float, int]:
    rng = random.Random(seed)
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    index = BlockIndex(capacity)
    names = [f"e{i}" for i in range(endpoints)]
    for name in names:  # each endpoint sent more distinct blocks than it can hold
        for _ in range(capacity * 5 // 4 // 256):
            index.add(name, [rng.getrandbits(64) for _ in range(256)])
    traced = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    entries = index.entries()
    return index.nbytes / entries, traced / entries, entries


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--picks", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--preset", action="append", help="preset or config file to time (repeatable)")
    parser.add_argument("--telemetry", action="store_true", help="also time with telemetry attached; print the ratio")
    args = parser.parse_args()
    policies: list[str] = args.preset or ["gie-default"]
    if args.telemetry:
        telemetry_overhead(args, policies[0])
        return
    print("pick latency (Scheduler.schedule incl. PreRequest), microseconds")
    print(f"{'policy':>20} {'endpoints':>9} {'prompt':>7} {'wall p50':>9} {'wall p99':>9} {'cpu p50':>8} {'cpu p99':>8}")
    for tokens in (1024, 32768):
        for n in (8, 64, 256):
            rounds: dict[str, list[tuple[float, float, float, float]]] = {p: [] for p in policies}
            for _ in range(args.rounds):  # interleaved: every policy sees the same machine load
                for policy in policies:
                    rounds[policy].append(pick_latency(n, tokens, args.picks, args.seed, policy))
            for policy in policies:
                best = [min(r[k] for r in rounds[policy]) for k in range(4)]
                cells = " ".join(f"{v:>{w}.0f}" for v, w in zip(best, (9, 9, 8, 8)))
                print(f"{policy[-20:]:>20} {n:>9} {tokens // 1024:>6}K {cells}")
    print("\nprefix index at capacity (lruCapacityPerServer 31250)")
    print(f"{'endpoints':>9} {'entries':>10} {'B/entry (nbytes)':>17} {'B/entry (tracemalloc)':>22}")
    for n in (8, 64):
        by_nbytes, by_trace, entries = index_bytes_per_entry(n, 31250, args.seed)
        print(f"{n:>9} {entries:>10} {by_nbytes:>17.1f} {by_trace:>22.1f}")


def paired_overhead(endpoints: int, tokens: int, picks: int, seed: int, preset: str) -> tuple[float, float, float]:
    """Two identical schedulers, one instrumented, fed the same requests pick by pick (order
    alternating), so both see the same machine load: (plain cpu p50, instrumented cpu p50, median of
    the per-pick differences) in µs."""
    rng = random.Random(seed)
    plain = load_scheduler(preset, clock=VirtualClock(), rng=random.Random(seed))
    timed = load_scheduler(preset, clock=VirtualClock(), rng=random.Random(seed))
    Telemetry().instrument(timed)
    states = _states(endpoints, rng)
    datastore = Datastore(VirtualClock())
    for scheduler in (plain, timed):
        scheduler.attach(datastore)
    for state in states:
        datastore.upsert(state.endpoint)
    prompts = _prompts(tokens, rng)
    cpu: dict[int, list[int]] = {id(plain): [], id(timed): []}
    in_flight: list[tuple[Scheduler, LLMRequest, EndpointState]] = []
    for i in range(picks + 200):
        for scheduler in ((plain, timed) if i % 2 else (timed, plain)):
            request = LLMRequest(f"r{i}", RequestKind.COMPLETIONS, "m", prompt_bytes=prompts[i % len(prompts)])
            c0 = time.thread_time_ns()
            picked = scheduler.schedule(request, states).endpoints[0]
            if i >= 200:
                cpu[id(scheduler)].append(time.thread_time_ns() - c0)
            in_flight.append((scheduler, request, picked))
        while len(in_flight) > 2 * IN_FLIGHT:
            scheduler, done, served = in_flight.pop(0)
            scheduler.response_started(done, served)
            scheduler.response_complete(done, served, {})
    a, b = cpu[id(plain)], cpu[id(timed)]
    diffs = sorted(y - x for x, y in zip(a, b))
    return statistics.median(a) / 1e3, statistics.median(b) / 1e3, diffs[len(diffs) // 2] / 1e3


def telemetry_overhead(args: argparse.Namespace, preset: str) -> None:
    print(f"{preset}: cpu per pick without / with telemetry (plugin timings + prefix metrics), µs; "
          f"best of {args.rounds} rounds")
    print(f"{'endpoints':>9} {'prompt':>7} {'plain p50':>9} {'telemetry p50':>13} {'paired Δ':>8} {'Δ/plain':>7}")
    for tokens in (1024, 32768):
        for n in (8, 64, 256):
            rounds = [paired_overhead(n, tokens, args.picks, args.seed, preset) for _ in range(args.rounds)]
            a, b, d = (min(r[k] for r in rounds) for k in range(3))
            print(f"{n:>9} {tokens // 1024:>6}K {a:>9.1f} {b:>13.1f} {d:>8.1f} {d / a:>7.1%}")


if __name__ == "__main__":
    main()
