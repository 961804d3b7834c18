from __future__ import annotations

from epp.engine.config import EngineConfig
from epp.engine.core import EngineCore
from epp.engine.request import EngineRequest, RequestStatus


def _core(**kw: object) -> EngineCore:
    return EngineCore(EngineConfig(**kw))  # type: ignore[arg-type]


def _req(rid: str, n: int, max_tokens: int = 4, base: int = 0, lora: str | None = None) -> EngineRequest:
    return EngineRequest(rid, [base + i for i in range(n)], max_tokens, 0.0, lora=lora)


def test_long_prompt_is_prefilled_in_chunks_under_the_token_budget() -> None:
    core = _core(max_num_batched_tokens=4096)
    core.add_request(_req("a", 10000))
    sched = core.scheduler.schedule()
    assert [(n, c) for _, n, c in sched.scheduled] == [(4096, 0)]
    assert core.scheduler.schedule().scheduled[0][1:] == (4096, 4096)
    last = core.step(0.0)
    assert [o.first_token for o in last.outputs] == [True]


def test_decodes_and_a_prefill_chunk_share_one_step() -> None:
    core = _core(max_num_batched_tokens=100)
    core.add_request(_req("a", 10))
    core.step(0.0)
    core.add_request(_req("b", 500, base=1000))
    sched = core.scheduler.schedule()
    assert [(r.request_id, n) for r, n, _ in sched.scheduled] == [("a", 1), ("b", 99)]


def test_max_num_seqs_keeps_the_rest_waiting() -> None:
    core = _core(max_num_seqs=2)
    for i in range(3):
        core.add_request(_req(f"r{i}", 20, base=100 * i))
    core.step(0.0)
    stats = core.stats()
    assert (stats.num_running, stats.num_waiting) == (2, 1)


def test_kv_pressure_preempts_the_newest_and_everyone_still_finishes() -> None:
    core = _core(num_gpu_blocks=9, block_size=4)  # 8 usable blocks = 32 tokens
    a, b = _req("a", 12, max_tokens=12), _req("b", 12, max_tokens=12, base=50)
    core.add_request(a)
    core.add_request(b)
    finished: list[str] = []
    t = 0.0
    for _ in range(200):
        if not core.has_unfinished_requests():
            break
        out = core.step(t)
        t += out.duration
        if core.stats().num_preemptions and not finished:
            assert b.status in (RequestStatus.PREEMPTED, RequestStatus.RUNNING)
            assert b.num_preemptions >= 1 and a.num_preemptions == 0
        finished += [o.request_id for o in out.outputs if o.finished]
    assert finished == ["a", "b"]
    stats = core.stats()
    assert stats.num_preemptions >= 1 and stats.kv_usage == 0.0
    assert stats.prefix_cache_queries == 24  # a preempted request is not counted twice


def test_lora_slots_limit_distinct_adapters_per_batch() -> None:
    core = _core(max_loras=1, lora_adapters=("x", "y"), lora_load_seconds=0.5)
    core.add_request(_req("a", 8, lora="x"))
    core.add_request(_req("b", 8, lora="y", base=100))
    core.add_request(_req("c", 8, base=200))
    first = core.step(0.0)
    stats = core.stats()
    assert stats.running_loras == {"x"} and stats.waiting_loras == {"y"}
    assert {o.request_id for o in first.outputs} == {"a", "c"}  # the base-model request skips ahead
    assert first.duration > 0.5  # loading adapter x
    t = first.duration
    while core.stats().running_loras != {"y"}:
        t += core.step(t).duration
    assert core.scheduler.loaded_loras == {"y": None}
