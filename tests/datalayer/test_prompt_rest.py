"""The rest of lazily read prompts encoded off the event loop (the data layer's ``ThreadOffload``) leaves
the precise producer exactly where the inline path (replay, tests) leaves it: the same picks, the same
index, byte for byte, for the same event sequence; a request that ends before its rest is hashed
books nothing (completed) or learns nothing (failed); a refused rest is skipped and counted; stopping
with encodes in flight loses no state and raises nothing."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable
from pathlib import Path

import numpy as np

from epp._util.clock import VirtualClock
from epp._util.offload import Split
from epp.config import load_scheduler_text
from epp.contracts.datalayer import DataNeeds
from epp.datalayer import DataLayer
from epp.datalayer.offload import ThreadOffload
from epp.datastore import Datastore, Endpoint, EndpointMetrics, EndpointState
from epp.request import LLMRequest, RequestKind
from epp.scheduling.prefix.index import BlockIndex
from epp.scheduling.prefix.precise_producer import PrecisePrefixCacheProducer
from epp.scheduling.prefix.tokens import engine_block_hashes
from epp.scheduling.scheduler import Scheduler
from epp.tokenizer.hf import HFTokenizer
from tests.conftest import wait_for

TINY = Path(__file__).parents[1] / "data" / "vllm-0.32-cpu" / "tiny-llama"
CONFIG = (
    "apiVersion: llm-d.ai/v1alpha1\nkind: EndpointPickerConfig\nplugins:\n"
    f"- {{type: precise-prefix-cache-producer, name: kv, parameters: {{mode: bind, bindEndpoint: 'tcp://127.0.0.1:0',"
    f" tokenizer: '{TINY}'}}}}\n"
    "- {type: prefix-cache-scorer, parameters: {prefixMatchInfoProducerName: kv}}\n"
    "- {type: ttft-predictor-scorer, parameters: {prefixMatchInfoProducerName: kv}}\n- {type: max-score-picker}\n"
    "schedulingProfiles:\n- name: default\n  plugins:\n  - {pluginRef: prefix-cache-scorer}\n"
    "  - {pluginRef: ttft-predictor-scorer}\n  - {pluginRef: max-score-picker}\n"
)
WORDS = ["alpha", " beta", " gamma,", " delta.", "\n", " epsilon", " 42", " zeta's", "  eta", " théta", " 中文", "\n\n"]


class Pool:
    """One scheduler with the precise producer over four endpoints, in virtual time."""

    def __init__(self) -> None:
        clock = VirtualClock()
        self.scheduler: Scheduler = load_scheduler_text(CONFIG, clock=clock, rng=random.Random(3))
        self.producer = next(p for p in self.scheduler.plugins if isinstance(p, PrecisePrefixCacheProducer))
        datastore = Datastore(clock)
        self.scheduler.attach(datastore)
        self.states = []
        for i in range(4):
            endpoint = Endpoint(f"e{i}", "127.0.0.1", 8000 + i)
            datastore.upsert(endpoint)
            self.states.append(EndpointState(endpoint, EndpointMetrics(scraped_at=0.0), stale=False))
        self.by_name = {s.endpoint.name: s for s in self.states}

    def index_state(self) -> tuple[list[bytes], dict[str, int]]:
        """The learned index, byte for byte (keys, owners, generations, fills, clock hands)."""
        index = self.producer.precise.fallback
        assert isinstance(index, BlockIndex)
        arrays: list[np.ndarray] = [index._keys, index._owners, index._entry_gens, index._current, index._fill,  # type: ignore[type-arg]
                                    index._hands]  # fmt: skip
        return [a.tobytes() for a in arrays], dict(index._slot_of)


def text(rng: random.Random, words: int) -> str:
    return "".join(rng.choice(WORDS) for _ in range(words))


def events(seed: int, count: int = 14) -> list[tuple[str, LLMRequest, str]]:
    """Requests (new prompts, prompts extending an earlier one, chats sharing a system prompt) and
    their lifecycle events, interleaved: ("pick" | "start" | "complete" | "fail", request, "")."""
    rng = random.Random(seed)
    system = text(rng, 300)
    prompts: list[str] = []
    pending: list[tuple[str, LLMRequest]] = []
    out: list[tuple[str, LLMRequest, str]] = []
    for n in range(count):
        shape = rng.random()
        if shape < 0.4 or not prompts:
            prompt = text(rng, rng.choice([200, 1500, 4000]))
        else:
            prompt = rng.choice(prompts) + text(rng, rng.choice([50, 800]))
        prompts.append(prompt)
        if rng.random() < 0.3:
            messages = [{"role": "system", "content": system}, {"role": "user", "content": prompt}]
            request = LLMRequest(f"r{n}", RequestKind.CHAT_COMPLETIONS, "m", body={"model": "m", "messages": messages})
        else:
            request = LLMRequest(f"r{n}", RequestKind.COMPLETIONS, "m", body={"model": "m", "prompt": prompt})
        out.append(("pick", request, ""))
        pending.append(("start", request))
        while pending and (len(pending) > 2 or rng.random() < 0.5):
            step, req = pending.pop(rng.randrange(len(pending)))
            if step == "start":
                ending = "fail" if rng.random() < 0.2 else "complete"
                if rng.random() < 0.85:  # some responses never say they started
                    out.append(("start", req, ""))
                pending.append((ending, req))
            else:
                out.append((step, req, ""))
    out.extend((step, req, "") for step, req in pending if step != "start")
    return out


def play(pool: Pool, event: tuple[str, LLMRequest, str], chosen: dict[str, str]) -> str | None:
    """One event; returns the pick's endpoint for a pick."""
    step, request, _ = event
    scheduler = pool.scheduler
    if step == "pick":
        name = scheduler.schedule(request, pool.states).endpoints[0].endpoint.name
        chosen[request.request_id] = name
        return name
    endpoint = pool.by_name[chosen[request.request_id]]
    if step == "start":
        scheduler.response_started(request, endpoint)
    elif step == "complete":
        scheduler.response_complete(request, endpoint, {"prompt_tokens": 100, "completion_tokens": 5})
    else:
        scheduler.response_complete(request, endpoint, {}, "engine-error")
    return None


async def test_off_loop_rests_leave_the_same_picks_and_index_as_the_inline_path() -> None:
    for seed in range(3):
        await compare_paths(seed)


async def compare_paths(seed: int) -> None:
    inline, threaded = Pool(), Pool()
    offload = ThreadOffload()
    await offload.start()
    threaded.producer.offload_to(offload)
    chosen_a: dict[str, str] = {}
    chosen_b: dict[str, str] = {}
    for event in events(seed):
        expected = play(inline, event, chosen_a)
        got = play(threaded, event, chosen_b)
        await wait_for(lambda: offload.in_flight == 0, what="the rest applied")  # as the next event would find it
        assert got == expected, event
        assert threaded.index_state() == inline.index_state(), event
    assert offload.counts["applied"] > 0 and offload.counts["skipped"] == offload.counts["failed"] == 0
    for pool in (inline, threaded):
        assert not pool.producer.tails and not pool.producer.added and not pool.producer._rests
    await offload.stop()


class Held:
    """An offload that keeps jobs until ``release`` (what the worker thread may do meanwhile)."""

    def __init__(self) -> None:
        self.jobs: list[tuple[Split[None], Callable[[], None]]] = []

    def submit(self, job: Split[None], discard: Callable[[], None]) -> bool:
        self.jobs.append((job, discard))
        return True

    def release(self) -> None:
        finishing = [job.compute() for job, _ in self.jobs]  # computed "meanwhile"
        self.jobs.clear()
        for finish in finishing:
            finish()


def prompt(seed: int, rid: str = "r") -> LLMRequest:
    return LLMRequest(rid, RequestKind.COMPLETIONS, "m", body={"model": "m", "prompt": text(random.Random(seed), 3000)})


def test_a_request_that_ends_before_its_rest_is_hashed_ends_as_on_the_inline_path() -> None:
    for ending in ("complete", "fail"):
        inline, held = Pool(), Pool()
        offload = Held()
        held.producer.offload_to(offload)
        request = prompt(1)
        chosen: dict[str, str] = {}
        for pool in (inline, held):
            for step in ("pick", "start", ending):
                play(pool, (step, request, ""), chosen)
        assert len(offload.jobs) == 1  # the rest is still being encoded
        offload.release()
        assert not held.producer.added and not held.producer._rests
        whole = engine_block_hashes(request, HFTokenizer.from_dir(TINY), 16, 256)  # the producer matches 256 blocks
        learned = [p.producer.precise.fallback.match(whole, list(p.by_name)) for p in (inline, held)]
        assert learned[0] == learned[1] and max(learned[1]) == (len(whole) if ending == "complete" else 0)
        assert held.producer.entries() == inline.producer.entries()
        if ending == "complete":
            assert held.index_state() == inline.index_state()
        # failed: the inline path wrote the rest and expired it again; the late one never writes it


def test_a_refused_rest_is_skipped_and_leaves_nothing_behind() -> None:
    pool = Pool()

    class Full:
        def submit(self, job: Split[None], discard: Callable[[], None]) -> bool:
            return False

    pool.producer.offload_to(Full())
    request = prompt(2)
    chosen: dict[str, str] = {}
    for step in ("pick", "start", "complete"):
        play(pool, (step, request, ""), chosen)
    whole = engine_block_hashes(request, HFTokenizer.from_dir(TINY), 16, 256)  # the producer matches 256 blocks
    learned = max(pool.producer.precise.fallback.match(whole, list(pool.by_name)))
    assert 0 < learned < len(whole)  # what the pick read, not the rest
    assert not pool.producer.tails and not pool.producer.added and not pool.producer._rests


async def test_a_data_layer_stopped_with_rests_in_flight_loses_nothing_and_refuses_later_ones() -> None:
    pool = Pool()
    needs: DataNeeds = pool.scheduler.data_needs
    assert needs.offloading == [pool.producer]
    layer = DataLayer(DataNeeds(offloading=needs.offloading))  # the offload alone (no sockets)
    await layer.start()
    assert layer.offload is not None
    chosen: dict[str, str] = {}
    requests = [prompt(10 + i, f"r{i}") for i in range(6)]
    for request in requests:
        play(pool, ("pick", request, ""), chosen)
        play(pool, ("start", request, ""), chosen)
    in_flight = layer.offload.in_flight
    assert in_flight > 0
    await layer.stop()  # the running encode finishes, the queued ones are discarded
    counts = layer.offload.counts
    assert counts["applied"] + counts["cancelled"] == 6 and layer.offload.in_flight == 0
    assert not pool.producer._rests
    for request in requests:
        play(pool, ("complete", request, ""), chosen)
    assert not pool.producer.added and not pool.producer.tails
    late = prompt(20, "late")
    play(pool, ("pick", late, ""), chosen)
    play(pool, ("start", late, ""), chosen)  # refused: the offload stopped
    assert layer.offload.counts["skipped"] == 1 and not pool.producer._rests
    await asyncio.sleep(0)


async def test_picks_on_the_loop_while_the_worker_encodes_with_the_same_tokenizer() -> None:
    """The worker's Rust encode and the loop's window encodes share one tokenizer: picks made while rests
    are being encoded read their prompts right, and every rest is learned whole."""
    pool = Pool()
    offload = ThreadOffload(max_in_flight=16)
    await offload.start()
    pool.producer.offload_to(offload)
    tokenizer = HFTokenizer.from_dir(TINY)
    chosen: dict[str, str] = {}
    requests = [prompt(30 + i, f"c{i}") for i in range(8)]
    for request in requests:
        play(pool, ("pick", request, ""), chosen)
        play(pool, ("start", request, ""), chosen)  # the rest goes to the worker; the next pick runs meanwhile
    assert offload.in_flight > 0
    await wait_for(lambda: offload.in_flight == 0, what="the rests applied")
    assert offload.counts["applied"] == len(requests)
    names = list(pool.by_name)
    for request in requests:
        whole = engine_block_hashes(request, tokenizer, 16, 256)
        held = pool.producer.precise.fallback.match(whole, names)
        assert held[names.index(chosen[request.request_id])] == len(whole)
    await offload.stop()
