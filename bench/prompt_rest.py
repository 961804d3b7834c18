"""Event-loop stall when a new long prompt's rest is encoded at its first response: inline vs off the loop.

The precise producer reads prompts lazily: the pick encodes about one window of a new prompt, the
rest is encoded and hashed at the request's first response (``ApproxPrefixCacheProducer.learn_tail``).
This bench runs the ``default`` preset with a model folder's tokenizer (``--tokenizer``, default the
tiny Llama in tests/data) over 8 endpoints on the event loop ``epp serve`` uses (uvloop, its collector
settings: ``tune_gc``), and for each
new prompt (a unique completion of ``--tokens`` tokens, or a chat of a 16K system prompt seen before
and a new 16K user turn) calls the response hook as the director does at the first response byte,
alternating the two offloads on the same prompts' shapes:

* ``inline`` — the rest encoded and hashed in the hook, on the loop (before; replay still does this);
* ``thread`` — the data layer's ``ThreadOffload``: the Rust encode on its worker (it releases the
  GIL), ids → blocks → hashes → index on the loop afterwards.

A probe task sleeping 1 ms on the same loop records how late it wakes while the rest is learned
(window: the hook until the rest is in the index, plus 20 ms): the stall every other stream of ``epp
serve`` would see. Printed side by side (ms, p50 and max over ``--prompts`` prompts per mode): the
probe's worst lateness, the hook's own time on the loop, the finishing step's time on the loop
(thread), the encode's time (worker, thread) — and the probe's lateness with no work (the floor).

``--gil`` instead shows whether the Rust encode releases the GIL: a thread encodes a ``--tokens`` text
with ``Tokenizer.encode`` (what ``HFTokenizer.encode`` calls) and with ``encode_batch_fast`` (what the
rest's ``compute`` calls) while the loop's 1 ms probe measures its worst lateness.

``--gc`` instead fills a tokenizer's piece cache with ``--prompts`` new prompts read to their end (as
the rests do) and times a full collection (best of 9) with the cache's ids stored as now (4-byte
arrays, which the collector does not walk) and as before (lists of ints), side by side, against the
same process with the cache emptied (cpu time of ``gc.collect``; start-up objects frozen as ``epp serve``
does, so what is timed is what serving adds).

``--metaspace`` instead states what a tokenizer that cannot be read lazily (Metaspace, as
SentencePiece-converted models are; trained here like tests/tokenizer/test_stream.py) costs on the
pick for a new 32K prompt: the whole prompt is encoded there.

    nice -n 10 python bench/prompt_rest.py [--prompts 12] [--tokens 32768] [--tokenizer DIR] [--max-tokens 131072]
    nice -n 10 python bench/prompt_rest.py --gil
    nice -n 10 python bench/prompt_rest.py --gc --prompts 120
    nice -n 10 python bench/prompt_rest.py --metaspace
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from schedule import _states, _Words  # noqa: E402 - the bench folder's shared helpers

from epp._util.cli import run_async  # noqa: E402
from epp._util.clock import VirtualClock  # noqa: E402
from epp.config import load_scheduler_text  # noqa: E402
from epp.config.presets import PRESETS  # noqa: E402
from epp.scheduling.scheduler import Scheduler  # noqa: E402
from epp._util.offload import INLINE, Offload, Split  # noqa: E402
from epp.datalayer.offload import ThreadOffload  # noqa: E402
from epp.request import LLMRequest, RequestKind  # noqa: E402
from epp.scheduling.prefix.precise_producer import PrecisePrefixCacheProducer  # noqa: E402
from epp.service import tune_gc  # noqa: E402

TINY = str(Path(__file__).parents[1] / "tests" / "data" / "vllm-0.32-cpu" / "tiny-llama")


def _default_with(tokenizer: str, max_tokens: int) -> Scheduler:
    """The ``default`` preset with ``tokenizer`` and ``maxPrefixTokensToMatch: max_tokens``."""
    shipped = ("tokenizer: auto", "maxPrefixTokensToMatch: 131072")
    text = PRESETS["default"]
    assert all(s in text for s in shipped)
    text = text.replace(shipped[0], f"tokenizer: '{tokenizer}'").replace(shipped[1], f"maxPrefixTokensToMatch: {max_tokens}")
    return load_scheduler_text(text, clock=VirtualClock(), rng=random.Random(1))


class Timed:
    """An offload that times the two steps of each job it passes on."""

    def __init__(self, inner: Offload) -> None:
        self.inner = inner
        self.compute_ms: list[float] = []
        self.finish_ms: list[float] = []
        self.finished = 0
        self.accepted = 0

    def submit(self, job: Split[None], discard: Callable[[], None]) -> bool:
        def compute() -> Callable[[], None]:
            t0 = time.perf_counter()
            finish = job.compute()
            self.compute_ms.append((time.perf_counter() - t0) * 1000)

            def timed() -> None:
                t1 = time.perf_counter()
                finish()
                self.finish_ms.append((time.perf_counter() - t1) * 1000)
                self.finished += 1

            return timed

        accepted = self.inner.submit(Split(compute), discard)
        self.accepted += accepted
        return accepted


class Probe:
    """How late 1 ms sleeps on the loop wake while ``window`` is set."""

    def __init__(self) -> None:
        self.window = False
        self.worst = 0.0
        self.stop = False

    async def run(self) -> None:
        while not self.stop:
            t0 = time.perf_counter()
            await asyncio.sleep(0.001)
            late = (time.perf_counter() - t0) * 1000 - 1.0
            if self.window:
                self.worst = max(self.worst, late)

    async def measure(self, work: Callable[[], None], done: Callable[[], bool]) -> tuple[float, float]:
        """(worst lateness, ``work``'s own time) over ``work`` until ``done()``, plus 20 ms."""
        await asyncio.sleep(0.02)
        self.worst, self.window = 0.0, True
        t0 = time.perf_counter()
        work()
        own = (time.perf_counter() - t0) * 1000
        while not done():
            await asyncio.sleep(0.001)
        await asyncio.sleep(0.02)
        self.window = False
        return self.worst, own


def pct(values: list[float]) -> str:
    return f"{statistics.median(values):7.1f} {max(values):7.1f}" if values else f"{'-':>7} {'-':>7}"


async def stall(args: argparse.Namespace) -> int:
    rng = random.Random(args.seed)
    words = _Words(args.tokenizer, rng)
    systems = [words.text(args.tokens // 2) for _ in range(2)]
    thread = ThreadOffload(max_in_flight=64)
    await thread.start()
    modes: dict[str, Timed] = {"inline": Timed(INLINE), "thread": Timed(thread)}
    rows: dict[tuple[str, str], tuple[list[float], list[float]]] = {}
    tune_gc()  # as ``epp serve`` once it serves
    probe = Probe()
    probing = asyncio.create_task(probe.run())
    floor = [(await probe.measure(lambda: None, lambda: True))[0] for _ in range(args.prompts)]
    counted: dict[str, list[int]] = {}
    for shape in ("completion, unique", "chat, seen 16K system + new 16K turn"):
        schedulers = {}
        for mode, offload in modes.items():
            scheduler = _default_with(args.tokenizer, args.max_tokens)
            producer = next(p for p in scheduler.plugins if isinstance(p, PrecisePrefixCacheProducer))
            producer.offload_to(offload)
            schedulers[mode] = scheduler
        states = _states(8, rng)
        for i in range(args.prompts + 1):  # the first of each is a warm-up (the chat's system prompt seen)
            if shape.startswith("chat"):
                body = {"model": "m", "messages": [{"role": "system", "content": systems[i % 2 if i < 2 else 0]},
                                                   {"role": "user", "content": words.text(args.tokens // 2)}]}  # fmt: skip
                kind = RequestKind.CHAT_COMPLETIONS
            else:
                body = {"model": "m", "prompt": words.text(args.tokens)}
                kind = RequestKind.COMPLETIONS
            if i % 4 == 1:
                text = words.tokenizer.render_chat(body["messages"], body) if "messages" in body else body["prompt"]
                counted.setdefault(shape, []).append(len(words.tokenizer.encode(text, "messages" not in body)))
            order = list(modes) if i % 2 else list(reversed(modes))
            for mode in order:  # the same request to each, in alternating order
                scheduler, timed = schedulers[mode], modes[mode]
                request = LLMRequest(f"{mode}-{i}", kind, "m", body=body)
                chosen = scheduler.schedule(request, states).endpoints[0]
                worst, own = await probe.measure(lambda s=scheduler, r=request, c=chosen: s.response_started(r, c),
                                                 lambda t=timed: t.finished == t.accepted)  # none: the pick read it all
                scheduler.response_complete(request, chosen, {"prompt_tokens": args.tokens, "completion_tokens": 1})
                if i:
                    probe_ms, own_ms = rows.setdefault((shape, mode), ([], []))
                    probe_ms.append(worst)
                    own_ms.append(own)
    probe.stop = True
    await probing
    await thread.stop()
    print(f"default preset (maxPrefixTokensToMatch {args.max_tokens}), 8 endpoints, tokenizer {args.tokenizer},"
          f" {args.prompts} new prompts per row; loop lag = how"
          f" late a 1 ms sleep on the same loop wakes while the rest is learned (ms, p50 / max)")
    print(f"{'prompt':>38} {'tokens':>7} {'mode':>7} {'loop lag p50':>12} {'max':>7} {'hook p50':>8} {'max':>7}")
    for shape in counted:
        tokens = round(statistics.mean(counted[shape]))
        for mode in modes:
            probe_ms, own_ms = rows[(shape, mode)]
            print(f"{shape:>38} {tokens:>7} {mode:>7} {pct(probe_ms):>20} {pct(own_ms):>16}")
    thread_t = modes["thread"]
    print(f"encode (the job's compute): inline, on the loop {pct(modes['inline'].compute_ms)}; thread, on its worker"
          f" {pct(thread_t.compute_ms)}; thread's finishing step on the loop {pct(thread_t.finish_ms)};"
          f" loop lag with no work {pct(floor)} (ms, p50 max; warm-ups included)")
    return 0


async def gil(args: argparse.Namespace) -> int:
    words = _Words(args.tokenizer, random.Random(args.seed))
    backend = words.tokenizer._backend
    calls: dict[str, Callable[[str], object]] = {
        "encode (holds the GIL?)": lambda text: backend.encode(text, add_special_tokens=False).ids,
        "encode_batch_fast": lambda text: backend.encode_batch_fast([text], add_special_tokens=False)[0].ids,
    }
    probe = Probe()
    probing = asyncio.create_task(probe.run())
    print(f"a worker thread encodes a new ~{args.tokens}-token text; the loop's 1 ms probe: worst lateness (ms),"
          f" p50 / max of {args.prompts}; the encode's wall time")
    for name, call in calls.items():
        late: list[float] = []
        wall: list[float] = []
        for _ in range(args.prompts):
            text = words.text(args.tokens)

            async def encode(t: str = text, c: Callable[[str], object] = call) -> None:
                t0 = time.perf_counter()
                await asyncio.to_thread(c, t)
                wall.append((time.perf_counter() - t0) * 1000)

            task: list[asyncio.Task[None]] = []
            worst, _ = await probe.measure(lambda e=encode, k=task: k.append(asyncio.create_task(e())),
                                           lambda k=task: bool(k) and k[0].done())
            late.append(worst)
        print(f"{name:>24}: loop lag {pct(late)}   encode {pct(wall)}")
    probe.stop = True
    await probing
    return 0


def collections(args: argparse.Namespace) -> int:
    import gc

    words = _Words(args.tokenizer, random.Random(args.seed))
    tokenizer = words.tokenizer
    tune_gc()  # as ``epp serve``: what exists at start-up is frozen out of the collector's sight
    for _ in range(args.prompts):
        stream = tokenizer.stream(words.text(args.tokens), True)
        stream.read(100)
        stream.read_all()
    pieces = tokenizer._pieces
    arrays = {text: piece.ids for text, piece in pieces.items()}
    ids = sum(len(a) for a in arrays.values())

    def full_collection_ms() -> float:
        times = []
        for _ in range(9):
            t0 = time.thread_time()  # cpu: the host's load does not count
            gc.collect()
            times.append((time.thread_time() - t0) * 1000)
        return min(times)

    rows = []
    for _ in range(3):  # alternated: the host's load moves
        for text, piece in pieces.items():
            piece.ids = arrays[text]
        now = full_collection_ms()
        for piece in pieces.values():
            piece.ids = piece.ids.tolist()  # type: ignore[assignment]
        before = full_collection_ms()
        for text, piece in pieces.items():
            piece.ids = arrays[text]
        saved = dict(pieces)
        pieces.clear()
        empty = full_collection_ms()
        pieces.update(saved)
        rows.append((now, before, empty))
    now, before, empty = (min(r[k] for r in rows) for k in range(3))
    print(f"piece cache: {len(pieces)} pieces, {tokenizer._piece_chars:,} characters, {ids:,} ids; full collection,"
          f" cpu ms (best of 9, best of 3 alternations): ids as arrays (now) {now:.1f}, as lists (before) {before:.1f},"
          f" cache emptied {empty:.1f}")
    return 0


def metaspace(args: argparse.Namespace) -> int:
    """A Metaspace BPE trained here (no download) on the tiny tokenizer's words; a new 32K prompt's pick."""
    import tempfile

    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    from epp.scheduling.prefix.tokens import engine_block_stream
    from epp.tokenizer.hf import HFTokenizer

    rng = random.Random(args.seed)
    words = _Words(args.tokenizer, rng)
    corpus = [words.text(200) for _ in range(300)]
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.Metaspace()
    backend.decoder = decoders.Metaspace()
    backend.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=8000, special_tokens=["<s>", "</s>"]))
    backend.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 0)])
    with tempfile.TemporaryDirectory() as folder:
        backend.save(f"{folder}/tokenizer.json")
        meta = HFTokenizer.from_dir(folder)
        tiny = HFTokenizer.from_dir(args.tokenizer)
        print(f"new ~{args.tokens}-token completion prompt, pick's read (engine_block_stream + first grow), cpu ms,"
              f" best / median of {args.prompts}:")
        for name, tokenizer in (("tiny (ByteLevel, read lazily)", tiny), ("Metaspace BPE (read whole)", meta)):
            cpu: list[float] = []
            tokens = 0
            for i in range(args.prompts):
                request = LLMRequest(f"m{i}", RequestKind.COMPLETIONS, "m", body={"model": "m", "prompt": words.text(args.tokens)})
                t0 = time.thread_time_ns()
                _, tail = engine_block_stream(request, tokenizer, 16, 8192)
                if tail is not None:
                    tail.next(1)  # the pick's first lookup
                cpu.append((time.thread_time_ns() - t0) / 1e6)
                tokens = len(tokenizer.encode(request.body["prompt"]))  # type: ignore[index]
            print(f"{name:>32}: {min(cpu):7.1f} / {statistics.median(cpu):7.1f} ms ({tokens} tokens)")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=12)
    parser.add_argument("--tokens", type=int, default=32768)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--tokenizer", default=TINY, metavar="DIR")
    parser.add_argument("--max-tokens", type=int, default=131072,
                        help="the producer's maxPrefixTokensToMatch (the preset's 131072; 4096 is the plugin's default)")
    parser.add_argument("--metaspace", action="store_true", help="the pick's cost of a tokenizer read whole")
    parser.add_argument("--gil", action="store_true", help="whether the Rust encode releases the GIL")
    parser.add_argument("--gc", action="store_true", help="a full collection with the piece cache's ids as arrays / lists")
    args = parser.parse_args()
    if args.gc:
        return collections(args)
    if args.metaspace:
        return metaspace(args)
    if args.gil:
        return run_async(gil(args))
    return run_async(stall(args))


if __name__ == "__main__":
    sys.exit(main())
