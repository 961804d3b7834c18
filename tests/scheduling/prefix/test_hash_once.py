"""A request's prompt is hashed once, however many producers, scorers, profiles and hooks ask for its
block hashes, and sharing the hashes changes no score."""

from __future__ import annotations

import random
from collections.abc import Callable

import numpy as np
import orjson
import pytest

from epp._util.clock import VirtualClock
from epp._util.hashing import ChainMemo, chain_hashes, text_blocks
from epp.config import load_scheduler, load_scheduler_text
from epp.datastore import EndpointMetrics, EndpointState
from epp.request import LLMRequest, RequestKind
from epp.scheduling.prefix import hashing, tokens
from epp.scheduling.prefix.hashing import prompt_block_hashes, request_seed
from epp.scheduling.prefix.index import _TAGGED_FROM, WAYS, BlockIndex
from epp.scheduling.prefix.tokens import engine_block_hashes
from epp.tokenizer.load import SIM
from epp.scheduling.framework import SchedulingResult
from epp.scheduling.scheduler import Scheduler
from tests.conftest import make_request, make_state
from tests.extproc.builders import make_director

def two_scorers(producer_1: str, producer_2: str) -> str:
    """A config with producers ``p1`` and ``p2`` (flow-mapping lines), each read by its own
    prefix-cache-scorer, plus the TTFT predictor reading ``p1``: only the producers differ per case."""
    return f"""\
apiVersion: llm-d.ai/v1alpha1
kind: EndpointPickerConfig
plugins:
- {producer_1}
- {producer_2}
- {{type: prefix-cache-scorer, name: s1, parameters: {{prefixMatchInfoProducerName: p1}}}}
- {{type: prefix-cache-scorer, name: s2, parameters: {{prefixMatchInfoProducerName: p2}}}}
- {{type: ttft-predictor-scorer, parameters: {{prefixMatchInfoProducerName: p1}}}}
- {{type: max-score-picker}}
schedulingProfiles:
- name: default
  plugins:
  - {{pluginRef: s1}}
  - {{pluginRef: s2}}
  - {{pluginRef: ttft-predictor-scorer}}
  - {{pluginRef: max-score-picker}}
"""


# Two approximate producers with the same block size and reach (e.g. one per scorer, as configs copied
# from several guides end up with): one prompt, one set of hashes.
TWO_PRODUCERS = two_scorers(
    "{type: approx-prefix-cache-producer, name: p1, parameters: {maxPrefixTokensToMatch: 65536}}",
    "{type: approx-prefix-cache-producer, name: p2, parameters: {maxPrefixTokensToMatch: 65536}}",
)
# Engine token blocks (precise, sim tokenizer) and byte blocks (approximate) are two different hashings
# of one prompt: each is done once.
PRECISE_AND_APPROX = two_scorers(
    "{type: precise-prefix-cache-producer, name: p1, parameters: {tokenizer: sim}}",
    "{type: approx-prefix-cache-producer, name: p2}",
)


def chat(rid: str, text: str, model: str = "m") -> LLMRequest:
    messages = [{"role": "user", "content": text}]
    return LLMRequest(request_id=rid, kind=RequestKind.CHAT_COMPLETIONS, model=model,
                      prompt_bytes=orjson.dumps(messages), body={"model": model, "messages": messages})


def pool(clock: VirtualClock, n: int = 3) -> list[EndpointState]:
    return [make_state(f"e{i}", address=f"10.0.0.{i + 1}",
                       metrics=EndpointMetrics(scraped_at=clock.now(), block_size=16, num_gpu_blocks=29202))
            for i in range(n)]


@pytest.fixture
def chain_calls(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Every hashing of a prompt (``chain_bytes``, wherever the prefix package calls it): its block size."""
    calls: list[int] = []

    def counting(real: Callable[..., list[int]]) -> Callable[..., list[int]]:
        def chain_bytes(data: bytes, block_bytes: int, seed: int, memo: ChainMemo | None = None) -> list[int]:
            calls.append(block_bytes)
            return real(data, block_bytes, seed, memo)
        return chain_bytes

    monkeypatch.setattr(hashing, "chain_bytes", counting(hashing.chain_bytes))
    monkeypatch.setattr(tokens, "chain_bytes", counting(tokens.chain_bytes))
    return calls


def route(scheduler: Scheduler, request: LLMRequest, endpoints: list[EndpointState]) -> str:
    result = scheduler.schedule(request, endpoints)
    return result.endpoints[0].name


@pytest.mark.parametrize(("config", "hashings"), [
    ("default", 1), ("gie-default", 1), ("llm-d-default", 1), (TWO_PRODUCERS, 1), (PRECISE_AND_APPROX, 2),
])
def test_each_request_is_hashed_once_per_kind_of_hashes(config: str, hashings: int, chain_calls: list[int]) -> None:
    clock = VirtualClock(10.0)
    rng = random.Random(3)
    scheduler = (load_scheduler_text(config, clock=clock, rng=rng) if "\n" in config
                 else load_scheduler(config, clock=clock, rng=rng))
    endpoints = pool(clock)
    shared = "a system prompt shared by every request " * 40
    for i in range(6):
        before = len(chain_calls)
        route(scheduler, chat(f"r{i}", shared + f"question {i} " * 30), endpoints)
        assert len(chain_calls) - before == hashings, chain_calls[before:]


def test_hashes_shared_through_the_request_equal_a_fresh_hashing() -> None:
    text = "lorem ipsum " * 900
    req = chat("r1", text)
    memo = ChainMemo()
    approx = prompt_block_hashes(req, 16, 8192, memo)
    assert prompt_block_hashes(req, 16, 8192, ChainMemo()) is approx  # the request's own, not hashed again
    seed = request_seed(req)
    assert approx == chain_hashes(text_blocks(req.prompt_bytes, 64), seed)
    engine = engine_block_hashes(req, SIM, 16, 8192, memo)
    assert engine is not approx and engine_block_hashes(req, SIM, 16, 8192) is engine
    assert prompt_block_hashes(req, 16, 4, memo) == approx[:4]  # another reach: hashed for itself
    assert prompt_block_hashes(req, 32, 8192) != approx  # another block size: other hashes


def test_a_replaced_prompt_or_target_model_is_hashed_again() -> None:
    req = make_request(prompt=b"a" * 640)
    first = prompt_block_hashes(req, 16, 256)
    req.prompt_bytes = b"b" * 640
    second = prompt_block_hashes(req, 16, 256)
    assert second != first and second == chain_hashes(text_blocks(b"b" * 640, 64), request_seed(req))
    req.target_model = "rewritten"
    assert prompt_block_hashes(req, 16, 256) == chain_hashes(text_blocks(b"b" * 640, 64), request_seed(req))
    assert request_seed(req) != request_seed(make_request(prompt=b"b" * 640))


def _scores(shared: bool, config: str) -> list[tuple[str, list[float]]]:
    """Routing picks and primary-profile scores through random traffic; ``shared=False`` gives every
    lookup a fresh request object, so nothing is reused across producers, scorers and hooks."""
    clock = VirtualClock(10.0)
    scheduler = load_scheduler_text(config, clock=clock, rng=random.Random(11))
    endpoints = pool(clock, 4)
    rng = random.Random(5)
    prefixes = ["tools and rules " * rng.randint(5, 60) for _ in range(4)]
    out: list[tuple[str, list[float]]] = []
    for i in range(40):
        req = chat(f"r{i}", rng.choice(prefixes) + "user turn " * rng.randint(1, 50))
        if not shared:
            req.block_hashes = _Forgetful()
        result = scheduler.schedule(req, endpoints)
        primary = result.profile_results[result.primary_profile]
        out.append((result.endpoints[0].name, list(primary.totals)))
        clock.advance(0.05)
        if i % 3 == 0:
            scheduler.response_complete(req, result.endpoints[0], {"prompt_tokens": 10, "completion_tokens": 4}, None)
    return out


class _Forgetful(dict[tuple[object, ...], tuple[tuple[object, ...], list[int]]]):
    """A request cache that keeps nothing: every producer and hook hashes again."""

    def __setitem__(self, key: tuple[object, ...], value: tuple[tuple[object, ...], list[int]]) -> None:
        pass


def test_sharing_hashes_changes_no_pick_and_no_score() -> None:
    assert _scores(True, TWO_PRODUCERS) == _scores(False, TWO_PRODUCERS)


def test_block_index_key_hits_equal_a_slot_by_slot_scan() -> None:
    """The flat-index lookup finds exactly the (row, slot) pairs a direct scan of each bucket finds."""
    index = BlockIndex(2000)
    rng = random.Random(2)
    for name in ("a", "b", "c"):
        index.add(name, [rng.getrandbits(64) for _ in range(1500)])
    stored = index._keys[index._keys != 0]
    hits = rng.sample(stored.tolist(), 700)
    # Keys that share a stored key's tag (top 16 bits) and bucket but differ: tag matches, key misses.
    near = [(k + int(index._buckets) * 2**20) % 2**64 for k in hits[:300]]
    for n in (_TAGGED_FROM - 1, _TAGGED_FROM + 500):  # both lookup paths
        probe = np.array([*hits, *near, *(rng.getrandbits(64) for _ in range(n))][:n], dtype=np.uint64)
        rows, pos, buckets = index._key_hits(probe)
        assert np.array_equal(buckets, probe % index._buckets)
        expected = [(r, int(b) * WAYS + w) for r, b in enumerate(probe % index._buckets)
                    for w in range(WAYS) if index._keys[int(b) * WAYS + w] == probe[r]]
        assert list(zip(rows.tolist(), pos.tolist())) == expected
        assert len(expected) >= 700


def test_a_routed_request_no_longer_holds_its_hashes() -> None:
    """The hashes are shared within the scheduling cycle; a request in flight for minutes must not keep
    ~56 KB of them (220 KB prompt) alive."""
    director = make_director("10.0.0.1:8000", "10.0.0.2:8000", config=TWO_PRODUCERS)
    req = chat("r1", "a long prompt " * 400)
    seen: list[int] = []
    real = director.scheduler.schedule

    def schedule(request: LLMRequest, candidates: list[EndpointState]) -> SchedulingResult:
        result = real(request, candidates)
        seen.append(len(request.block_hashes))
        return result

    director.scheduler.schedule = schedule  # type: ignore[method-assign]
    decision = director.route(req, 0)
    assert seen == [1] and decision.request is req and req.block_hashes == {}
