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
``--tokenizer DIR`` instead measures what tokenizing with a served model's own tokenizer (``DIR``: its
folder, e.g. ``tests/data/vllm-0.32-cpu/tiny-llama``) adds to a ``default`` pick, against the same
preset with ``tokenizer: sim`` fed the same requests in turn, twice: reading each prompt whole at the
pick (as epp did before prompts were read lazily) and lazily (now; the rest of the prompt is read in
the response hooks, timed apart): chat requests (one of 32 system
prompts, half the tokens, then a unique user turn) and completion requests (a unique prompt each
pick, so nothing is reused; or one of 32 preambles, half the tokens, then a unique tail), at 1K and
32K tokens of that tokenizer; then the cost of encoding a 32K-token text once, uncached, and of a 32K
conversation whose earlier turns were seen, whole and read lazily up to the new turn's first window.

    python bench/schedule.py [--picks 2000] [--rounds 3] [--seed 1] [--preset gie-default ...] [--telemetry]
    python bench/schedule.py --tokenizer tests/data/vllm-0.32-cpu/tiny-llama [--picks 1000]
"""

from __future__ import annotations

import argparse
import random
from collections.abc import Iterable
from typing import Any
import statistics
import time
import tracemalloc

from epp._util.clock import VirtualClock
from epp.datastore import Datastore, Endpoint, EndpointMetrics, EndpointState
from epp.request import LLMRequest, RequestKind
from epp.scheduling.prefix.index import BlockIndex
from epp.config import load_scheduler
from epp.config.presets import PRESETS
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
    parser.add_argument("--tokenizer", metavar="DIR", help="time the default pick with this model folder's tokenizer against sim")
    args = parser.parse_args()
    policies: list[str] = args.preset or ["gie-default"]
    if args.tokenizer:
        tokenizer_cost(args)
        return
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
    prompts = _prompts(tokens, rng)
    requests = (LLMRequest(f"r{i}", RequestKind.COMPLETIONS, "m", prompt_bytes=prompts[i % len(prompts)])
                for i in range(picks + 200))  # fmt: skip
    (a, _, _, _), (b, d, _, _) = _alternate([plain, timed], _states(endpoints, rng), requests, warmup=200)
    return a, b, d


def _alternate(schedulers: list[Scheduler], states: list[EndpointState], requests: Iterable[LLMRequest],
               warmup: int) -> list[tuple[float, float, float, float]]:  # fmt: skip
    """Feed every request to all schedulers, which one first rotating, so all see the same machine
    load; requests start and complete ``IN_FLIGHT`` picks later. Per scheduler, leaving out the first
    ``warmup`` requests: (cpu p50 of a pick, median of the per-pick differences against the first
    scheduler, cpu p50 of the response hooks — what a plugin defers past the pick, cpu p99 of a pick) in µs."""
    datastore = Datastore(VirtualClock())
    for scheduler in schedulers:
        scheduler.attach(datastore)
    for state in states:
        datastore.upsert(state.endpoint)
    cpu: list[list[int]] = [[] for _ in schedulers]
    after: list[list[int]] = [[] for _ in schedulers]
    in_flight: list[tuple[int, LLMRequest, EndpointState]] = []
    n = len(schedulers)
    listed = list(requests)
    for i, request in enumerate(listed):
        last = i == len(listed) - 1  # then every request in flight ends
        for k in [(i + j) % n for j in range(n)]:
            c0 = time.thread_time_ns()
            picked = schedulers[k].schedule(request, states).endpoints[0]
            if i >= warmup:
                cpu[k].append(time.thread_time_ns() - c0)
            in_flight.append((k, request, picked))
        while len(in_flight) > n * IN_FLIGHT or (in_flight and last):
            k, done, served = in_flight.pop(0)
            c0 = time.thread_time_ns()
            schedulers[k].response_started(done, served)
            schedulers[k].response_complete(done, served, {})
            if int(done.request_id[1:]) >= warmup:
                after[k].append(time.thread_time_ns() - c0)
    out = []
    for k in range(n):
        diffs = sorted(q - p for p, q in zip(cpu[0], cpu[k]))
        p99 = sorted(cpu[k])[int(len(cpu[k]) * 0.99)]
        out.append((statistics.median(cpu[k]) / 1e3, diffs[len(diffs) // 2] / 1e3, statistics.median(after[k] or [0]) / 1e3,
                    p99 / 1e3))
    return out


def telemetry_overhead(args: argparse.Namespace, preset: str) -> None:
    print(f"{preset}: cpu per pick without / with telemetry (plugin timings + prefix metrics), µs; "
          f"best of {args.rounds} rounds")
    print(f"{'endpoints':>9} {'prompt':>7} {'plain p50':>9} {'telemetry p50':>13} {'paired Δ':>8} {'Δ/plain':>7}")
    for tokens in (1024, 32768):
        for n in (8, 64, 256):
            rounds = [paired_overhead(n, tokens, args.picks, args.seed, preset) for _ in range(args.rounds)]
            a, b, d = (min(r[k] for r in rounds) for k in range(3))
            print(f"{n:>9} {tokens // 1024:>6}K {a:>9.1f} {b:>13.1f} {d:>8.1f} {d / a:>7.1%}")


def _default_with(tokenizer: str) -> Scheduler:
    shipped = "tokenizer: auto"
    assert shipped in PRESETS["default"]
    text = PRESETS["default"].replace(shipped, f"tokenizer: '{tokenizer}'")
    from epp.config import load_scheduler_text

    return load_scheduler_text(text, clock=VirtualClock(), rng=random.Random(1))


class _Words:
    """Text of about ``n`` tokens of a tokenizer: random words of its own vocabulary, with punctuation
    and line breaks, so the token count is what a real prompt of that length has."""

    def __init__(self, folder: str, rng: random.Random) -> None:
        from epp.tokenizer.hf import HFTokenizer

        self.tokenizer = HFTokenizer.from_dir(folder)
        vocab = self.tokenizer._backend.get_vocab()
        self.words = sorted(w[1:] for w in vocab if w.startswith("Ġ") and w[1:].isalpha() and len(w) > 3)
        self.rng = rng
        sample = self.text_of_words(2000)
        self.tokens_per_word = len(self.tokenizer.encode(sample, False)) / 2000

    def text_of_words(self, n: int) -> str:
        rng, words = self.rng, self.words
        out = []
        for i in range(n):
            out.append(rng.choice(words))
            if i % 12 == 11:
                out.append(rng.choice((".", ",", ".\n", ";")))
        return " ".join(out)

    def text(self, tokens: int) -> str:
        return self.text_of_words(max(1, round(tokens / self.tokens_per_word)))


SHAPES = ("chat", "completion, shared preamble", "completion, unique")


def _eager(scheduler: Scheduler) -> Scheduler:
    """``scheduler`` with its precise producer tokenizing and hashing each prompt whole at the pick
    (``engine_block_hashes``, no lazy tail): how the pick worked before prompts were read lazily."""
    from epp.scheduling.prefix.precise_producer import PrecisePrefixCacheProducer
    from epp.scheduling.prefix.tokens import engine_block_hashes

    for plugin in scheduler.plugins:
        if isinstance(plugin, PrecisePrefixCacheProducer):
            def blocks(request: LLMRequest, block_tokens: int, max_blocks: int, p: PrecisePrefixCacheProducer = plugin) -> tuple[list[int], None]:
                hashes, tail = PrecisePrefixCacheProducer.prompt_blocks(p, request, block_tokens, max_blocks)
                tokenizer = p.tokenizers.for_model(request.target_model)
                if tail is None or tokenizer is None:
                    return hashes, None
                return engine_block_hashes(request, tokenizer, block_tokens, max_blocks, p.chains), None

            plugin.prompt_blocks = blocks  # type: ignore[method-assign]
    return scheduler


TOKENIZER_RUNS = ("sim", "model, whole", "model, lazy")


def tokenizer_pair(endpoints: int, tokens: int, picks: int, seed: int, folder: str, shape: str) -> tuple[list[tuple[float, float, float, float]], int]:
    """``default`` with ``tokenizer: sim``, and with ``folder``'s tokenizer reading each prompt whole
    at the pick (before) and lazily (now), fed the same requests in turn: per run (cpu p50 of a pick,
    median per-pick difference against sim, cpu p50 of the response hooks, cpu p99 of a pick) in µs,
    and the prompts' mean token count under the model's tokenizer."""
    rng = random.Random(seed)
    words = _Words(folder, rng)
    systems = [words.text(tokens // 2) for _ in range(32)]
    bodies: list[dict[str, Any]] = []
    for _ in range(picks + 50):
        if shape == "chat":
            bodies.append({"model": "m", "messages": [{"role": "system", "content": rng.choice(systems)},
                                                      {"role": "user", "content": words.text(tokens // 2)}]})  # fmt: skip
        elif shape == "completion, shared preamble":
            bodies.append({"model": "m", "prompt": rng.choice(systems) + words.text(tokens // 2)})
        else:
            bodies.append({"model": "m", "prompt": words.text(tokens)})
    kind = RequestKind.CHAT_COMPLETIONS if shape == "chat" else RequestKind.COMPLETIONS
    counted = [len(words.tokenizer.encode(words.tokenizer.render_chat(b["messages"]) if "messages" in b else b["prompt"]))
               for b in bodies[::50]]  # fmt: skip
    requests = (LLMRequest(f"r{i}", kind, "m", body=body) for i, body in enumerate(bodies))
    runs = [_default_with("sim"), _eager(_default_with(folder)), _default_with(folder)]
    return _alternate(runs, _states(endpoints, rng), requests, warmup=50), round(statistics.mean(counted))


def tokenizer_cost(args: argparse.Namespace) -> None:
    print(f"default preset, 64 endpoints: cpu per pick with tokenizer sim / {args.tokenizer} (prompts read whole"
          f" at the pick, as before / lazily), µs; best of {args.rounds} rounds. Δ: median per-pick difference"
          f" against sim; hooks: cpu p50 of a request's response hooks (where the lazy reader finishes the prompt)")
    print(f"{'requests':>28} {'tokens':>7} {'sim p50':>8} {'whole p50':>9} {'whole Δ':>8} {'lazy p50':>8} {'lazy Δ':>8}"
          f" {'whole hooks':>11} {'lazy hooks':>10} {'whole p99':>9} {'lazy p99':>8}")
    for tokens in (1024, 32768):
        picks = args.picks if tokens <= 1024 else max(50, args.picks // 16)
        for shape in SHAPES:
            rounds = [tokenizer_pair(64, tokens, picks, args.seed, args.tokenizer, shape) for _ in range(args.rounds)]
            best = [[min(r[0][run][k] for r in rounds) for k in range(4)] for run in range(len(TOKENIZER_RUNS))]
            (sim, _, _, _), (whole, whole_d, whole_h, whole_99), (lazy, lazy_d, lazy_h, lazy_99) = best
            print(f"{shape:>28} {rounds[0][1]:>7} {sim:>8.0f} {whole:>9.0f} {whole_d:>8.0f} {lazy:>8.0f} {lazy_d:>8.0f}"
                  f" {whole_h:>11.0f} {lazy_h:>10.0f} {whole_99:>9.0f} {lazy_99:>8.0f}")
    words = _Words(args.tokenizer, random.Random(args.seed))
    from epp.tokenizer.hf import HFTokenizer

    cold = []
    for _ in range(5):
        fresh = HFTokenizer.from_dir(args.tokenizer)  # empty piece cache
        text = words.text(32768)
        c0 = time.thread_time_ns()
        ids = fresh.encode(text, True)
        cold.append(time.thread_time_ns() - c0)
    print(f"encoding {len(ids)} tokens uncached: {min(cold) / 1e6:.1f} ms cpu (best of 5)")
    turns: list[dict[str, str]] = []
    tokenizer = HFTokenizer.from_dir(args.tokenizer)
    while len(tokenizer.encode(tokenizer.render_chat(turns), False) if turns else ()) < 32768:
        turns += [{"role": "user", "content": words.text(512)}, {"role": "assistant", "content": words.text(512)}]
        tokenizer.encode(tokenizer.render_chat(turns), False)  # the conversation so far, as earlier requests sent it
    warm = []
    for _ in range(5):
        turns += [{"role": "user", "content": words.text(512)}]
        c0 = time.thread_time_ns()
        ids = tokenizer.encode(tokenizer.render_chat(turns), False)
        warm.append(time.thread_time_ns() - c0)
        turns += [{"role": "assistant", "content": words.text(512)}]
    print(f"a {len(ids)}-token conversation whose earlier turns were seen, one new 512-token turn:"
          f" {min(warm) / 1e6:.2f} ms cpu to render and encode (best of 5)")
    lazy = []
    for _ in range(5):
        seen = len(tokenizer.encode(tokenizer.render_chat(turns), False))  # the conversation so far, as sent
        turns += [{"role": "user", "content": words.text(512)}]
        c0 = time.thread_time_ns()
        stream = tokenizer.stream(tokenizer.render_chat(turns), False)
        read = len(stream.read(seen)) // 4  # through the seen turns, then one window of the new one
        lazy.append(time.thread_time_ns() - c0)
        turns += [{"role": "assistant", "content": words.text(512)}]
    print(f"the same, read lazily as the pick reads it (the seen turns, then the new turn's first window,"
          f" {read} tokens): {min(lazy) / 1e6:.2f} ms cpu to render and read (best of 5)")


if __name__ == "__main__":
    main()
