"""bench/floor.py's two claims, checked against the engine it reads: the lone-prefill floor is what an
idle engine really charges a prompt with that hit, and the oracle's forecast is the TTFT the engine then
really gives (nothing else arriving, KV to spare) — else its bound would bound nothing."""

from __future__ import annotations

import importlib.util
import random
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

from epp._util.hashing import chain_hashes, seed_hash, token_blocks
from epp.engine.config import EngineConfig
from epp.engine.core import EngineCore
from epp.engine.request import EngineRequest

BENCH = Path(__file__).resolve().parents[2] / "bench"


@pytest.fixture(scope="module")
def floor() -> Iterator[ModuleType]:
    sys.path.insert(0, str(BENCH))  # floor.py imports its sibling ttft_accuracy, as when run as a script
    try:
        spec = importlib.util.spec_from_file_location("floor_bench", BENCH / "floor.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module  # dataclasses look their module up there
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.path.remove(str(BENCH))
        sys.modules.pop("floor_bench", None)


def _engine() -> EngineCore:
    return EngineCore(EngineConfig(profile="llama-3.2-1b-h100", num_gpu_blocks=20_000))


def _tokens(rng: random.Random, n: int) -> list[int]:
    return [rng.randrange(1, 30_000) for _ in range(n)]


def _run_until_first_token(engine: EngineCore, request_id: str, now: float) -> float:
    """Step ``engine`` from ``now`` until ``request_id`` has its first token; that token's time."""
    while True:
        out = engine.step(now)
        assert out.duration > 0, "the engine went idle before the request's first token"
        now += out.duration
        for o in out.outputs:
            if o.request_id == request_id and o.first_token:
                assert o.first_token_time == pytest.approx(now)
                return now


def _hashes(floor: ModuleType, engine: EngineCore, tokens: list[int]) -> list[int]:
    return chain_hashes(token_blocks(tokens, engine.block_size), seed_hash(engine.config.model))


def test_the_lone_floor_is_what_an_idle_engine_charges_with_that_hit(floor: ModuleType) -> None:
    rng = random.Random(1)
    engine = _engine()
    shared = _tokens(rng, 10_000)
    engine.add_request(EngineRequest("a", shared + _tokens(rng, 3_000), 1, 0.0))
    t = _run_until_first_token(engine, "a", 0.0)
    prompt = shared + _tokens(rng, 17_001)  # three chunks of 8192 after the hit
    hit = floor.cached_prefix(engine, _hashes(floor, engine, prompt), len(prompt))
    assert hit == 10_000 // 16 * 16
    engine.add_request(EngineRequest("b", prompt, 4, t))
    first = _run_until_first_token(engine, "b", t)
    budget = engine.scheduler.max_num_batched_tokens
    assert first - t == pytest.approx(floor.lone_ttft(engine.latency, budget, len(prompt), hit), rel=1e-12)
    # with no hit it costs more, and the floor says so
    assert floor.lone_ttft(engine.latency, budget, len(prompt), 0) > first - t


def test_the_oracle_forecast_is_the_ttft_the_engine_then_gives(floor: ModuleType) -> None:
    rng = random.Random(2)
    engine = _engine()
    # a busy engine: two requests decoding, one long prefill half done, one waiting
    for i, n in enumerate((900, 1_500)):
        engine.add_request(EngineRequest(f"d{i}", _tokens(rng, n), 40, 0.0))
    now = _run_until_first_token(engine, "d1", 0.0)
    engine.add_request(EngineRequest("long", _tokens(rng, 20_000), 8, now))
    engine.add_request(EngineRequest("queued", _tokens(rng, 6_000), 8, now))
    out = engine.step(now)  # in flight: the new request arrives mid-step and joins the next one
    free_at = now + out.duration
    arrival = now + out.duration / 3
    prompt = _tokens(rng, 9_000)
    forecast = floor.forecast_request(engine, free_at, arrival, _hashes(floor, engine, prompt), len(prompt), 5, True)
    assert forecast.pending == 2  # "long" and "queued" have no first token yet
    assert forecast.delay > 0  # it shares their steps, so they get theirs later
    engine.add_request(EngineRequest("mine", prompt, 5, arrival))
    first = _run_until_first_token(engine, "mine", free_at)
    assert first - arrival == pytest.approx(forecast.ttft, rel=1e-12)


def test_ideal_hits_are_the_longest_prefix_any_earlier_prompt_wrote(floor: ModuleType) -> None:
    class Prompt:
        def __init__(self, tokens: list[int]) -> None:
            self._tokens = tokens

        def tokens(self) -> list[int]:
            return self._tokens

    class Request:
        def __init__(self, tokens: list[int]) -> None:
            self.prompt = Prompt(tokens)

    rng = random.Random(3)
    a, b = _tokens(rng, 100), _tokens(rng, 100)
    requests = [Request(a), Request(b), Request(a[:64] + b), Request(a + [7]), Request(a[:40])]
    # the fourth holds all of a's 6 full blocks; the last is capped below its own length (39 → 2 blocks)
    assert floor.ideal_hits(requests, 16) == [0, 0, 64, 96, 32]
