from __future__ import annotations

import random

import pytest

from epp._util.hashing import chain_hashes, seed_hash, token_blocks
from epp.engine.block_pool import BlockRemoved, BlockStored
from epp.engine.config import EngineConfig
from epp.engine.core import EngineCore
from epp.engine.driver import run_virtual
from epp.engine.request import EngineRequest


def _workload(seed: int, n: int = 60) -> list[EngineRequest]:
    rng = random.Random(seed)
    prefixes = [[rng.randrange(1 << 32) for _ in range(rng.randrange(16, 400))] for _ in range(4)]
    out: list[EngineRequest] = []
    t = 0.0
    for i in range(n):
        t += rng.expovariate(20.0)
        prompt = rng.choice(prefixes) + [rng.randrange(1 << 32) for _ in range(rng.randrange(1, 300))]
        out.append(EngineRequest(f"r{i}", prompt, rng.randrange(1, 80), t))
    return out


def test_fused_decode_gives_the_same_timeline_as_single_steps() -> None:
    config = EngineConfig(num_gpu_blocks=90, max_num_seqs=8)
    core = EngineCore(config)
    fused = {c.request_id: c for c in run_virtual(core, _workload(1), fuse=True)}
    assert core.stats().num_preemptions > 0  # the comparison covers preemption and recompute too
    single = {c.request_id: c for c in run_virtual(EngineCore(config), _workload(1), fuse=False)}
    assert fused.keys() == single.keys() and len(fused) == 60
    for rid, s in single.items():
        f = fused[rid]
        assert f.first_token_time == pytest.approx(s.first_token_time, rel=1e-9)
        assert f.finish_time == pytest.approx(s.finish_time, rel=1e-9)
        assert f.num_cached_tokens == s.num_cached_tokens


def test_fusing_stops_before_the_horizon() -> None:
    core = EngineCore()
    core.add_request(EngineRequest("a", list(range(100)), 500, 0.0))
    first = core.step(0.0, horizon=1.0)
    assert first.num_iterations == 1  # a prefill is never fused
    out = core.step(first.duration, horizon=0.1)
    end = first.duration + out.duration
    assert out.num_iterations > 1
    assert end >= 0.1 and end - core.latency.decode(1, 100 + out.num_iterations) < 0.1


def test_same_seed_same_numbers() -> None:
    config = EngineConfig(latency_jitter=0.05, seed=7, num_gpu_blocks=300)
    a = run_virtual(EngineCore(config), _workload(2))
    b = run_virtual(EngineCore(config), _workload(2))
    assert [(c.request_id, c.finish_time) for c in a] == [(c.request_id, c.finish_time) for c in b]


def test_repeated_prompt_hits_the_prefix_cache() -> None:
    core = EngineCore()
    prompt = list(range(1000))
    done = run_virtual(core, [EngineRequest("a", prompt, 2, 0.0), EngineRequest("b", prompt, 2, 5.0)])
    by_id = {c.request_id: c for c in done}
    assert by_id["a"].num_cached_tokens == 0 and by_id["b"].num_cached_tokens == 992
    assert by_id["b"].ttft < by_id["a"].ttft / 2
    stats = core.stats()
    assert (stats.prefix_cache_queries, stats.prefix_cache_hits) == (2000, 992)
    assert stats.prompt_tokens_total == 2000 and stats.generation_tokens_total == 4


def test_block_hashes_follow_the_shared_chain_and_events_carry_them() -> None:
    core = EngineCore(EngineConfig(enable_kv_events=True, model="m", num_gpu_blocks=8, block_size=4))
    prompt = list(range(10))
    run_virtual(core, [EngineRequest("a", prompt, 3, 0.0)])
    expected = chain_hashes(token_blocks(prompt, 4), seed_hash("m"))
    events = core.take_kv_events()
    assert events[0] == BlockStored(tuple(expected), None, tuple(range(8)), 4, None)
    assert isinstance(events[1], BlockStored) and events[1].parent_block_hash == expected[-1]
    assert core.take_kv_events() == []
    run_virtual(core, [EngineRequest("b", [500 + i for i in range(20)], 1, 10.0)])
    assert any(isinstance(e, BlockRemoved) for e in core.take_kv_events())


def test_abort_frees_blocks_and_forgets_the_request() -> None:
    core = EngineCore()
    core.add_request(EngineRequest("a", list(range(100)), 50, 0.0))
    core.step(0.0)
    assert core.stats().kv_usage > 0
    assert core.abort("a") and not core.abort("a")
    assert core.stats().kv_usage == 0.0 and not core.has_unfinished_requests()
    assert core.step(1.0).outputs == []


@pytest.mark.parametrize(
    "request_, message",
    [
        (EngineRequest("x", [1] * 200_000, 1, 0.0), "max_model_len"),
        (EngineRequest("x", [1], 1, 0.0, lora="nope"), "LoRA"),
    ],
)
def test_bad_requests_are_refused(request_: EngineRequest, message: str) -> None:
    core = EngineCore()
    with pytest.raises(ValueError, match=message):
        core.add_request(request_)
    assert not core.has_unfinished_requests()


def test_duplicate_ids_and_empty_prompts_are_refused() -> None:
    core = EngineCore()
    core.add_request(EngineRequest("a", [1], 1, 0.0))
    with pytest.raises(ValueError, match="duplicate"):
        core.add_request(EngineRequest("a", [1], 1, 0.0))
    with pytest.raises(ValueError):
        EngineRequest("b", [], 1, 0.0)
    with pytest.raises(ValueError):
        EngineConfig(profile="gpt-5")
