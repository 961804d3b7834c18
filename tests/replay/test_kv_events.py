"""Offline replay feeds engines' KV-cache events to the scheduler's precise prefix producers."""

from __future__ import annotations

from pathlib import Path

import pytest

from epp.contracts.kv_events import FeedState
from epp._util.clock import VirtualClock
from epp.engine.config import EngineConfig
from epp.contracts.datalayer import kv_event_views
from epp.replay.offline import ClusterSpec, OfflineReplay
from epp.replay.policies import resolve
from epp.replay.replicas import Replicas
from epp.replay.traces import SegmentPrompt, TraceRequest
from epp.request import LLMRequest, RequestKind
from epp.scheduling.prefix.precise import PreciseIndex
from epp.scheduling.prefix.tokens import engine_block_hashes
from epp.tokenizer.load import SIM_TOKENIZER, load_tokenizer

PRECISE = """\
apiVersion: llm-d.ai/v1alpha1
kind: EndpointPickerConfig
plugins:
- {type: precise-prefix-cache-producer, name: kv}
- {type: prefix-cache-scorer, parameters: {prefixMatchInfoProducerName: kv}}
- {type: queue-scorer}
- {type: max-score-picker}
schedulingProfiles:
- name: default
  plugins:
  - {pluginRef: prefix-cache-scorer, weight: 3}
  - {pluginRef: queue-scorer}
  - {pluginRef: max-score-picker}
"""
# 40 blocks per engine, 12 prompts of 16 blocks: engines evict, so removals must arrive too
CLUSTER = ClusterSpec(engines=3, engine=EngineConfig(num_gpu_blocks=40))


def trace() -> list[TraceRequest]:
    """6 system prompts of 192 tokens, each asked twice in a row (so by both of two replicas) with a
    64-token question, 0.1 s apart."""
    return [
        TraceRequest(0.1 * i, SegmentPrompt(((1_000 * (i // 2), 192), (50_000 + 100 * i, 64))), 4)
        for i in range(12)
    ]


def run_precise(tmp_path: Path, replicas: int) -> tuple[OfflineReplay, list[PreciseIndex]]:
    config = tmp_path / "precise.yaml"
    config.write_text(PRECISE)
    clock = VirtualClock()
    schedulers, _ = Replicas(replicas).build(resolve(str(config)), clock, 0)
    driver = OfflineReplay(trace(), schedulers, CLUSTER, clock)
    indexes = kv_event_views(s.data_needs for s in schedulers)
    assert len(indexes) == replicas and all(isinstance(i, PreciseIndex) for i in indexes)
    return driver, [i for i in indexes if isinstance(i, PreciseIndex)]


@pytest.mark.parametrize("replicas", [1, 2])
def test_precise_view_equals_the_engines_caches(tmp_path: Path, replicas: int) -> None:
    """Every replica's precise index holds, per engine, exactly the prefix blocks that engine caches
    (stores and evictions), and answers from events: each feed is LIVE, not the learned fallback."""
    driver, indexes = run_precise(tmp_path, replicas)
    run = driver.run()
    assert all(r.finish is not None for r in run.records)
    assert run.kv_event_batches is not None and run.kv_event_batches > 0
    held: dict[tuple[int, int], int] = {}  # (request, engine) → leading blocks the engine caches
    for index in indexes:
        for e, (endpoint, engine) in enumerate(zip(driver.endpoints, driver.engines)):
            assert index.feed_state(endpoint.name) is FeedState.LIVE
            for i, request in enumerate(trace()):
                hashes = prompt_hashes(request)
                cached = 0
                while cached < len(hashes) and engine.pool.get_cached_block(hashes[cached]) is not None:
                    cached += 1
                assert index.match(hashes, [endpoint.name]) == [cached]
                held[i, e] = cached
    # both kinds of event mattered: some prompts are still cached, and the small caches evicted some
    # prompt from the engine that computed it
    assert any(held.values())
    assert any(held[i, r.engine] < len(prompt_hashes(q)) for i, (r, q) in enumerate(zip(run.records, trace())))


def prompt_hashes(request: TraceRequest) -> list[int]:
    """The prompt's engine block keys, as the precise producer hashes them."""
    llm = LLMRequest("q", RequestKind.COMPLETIONS, CLUSTER.engine.model, prompt_token_ids=request.prompt.tokens())
    return engine_block_hashes(llm, load_tokenizer(SIM_TOKENIZER), 16, 64)


def test_policies_without_consumers_run_engines_without_events() -> None:
    clock = VirtualClock()
    driver = OfflineReplay(trace(), [resolve("gie-default").build(clock, 0)], CLUSTER, clock)
    run = driver.run()
    assert driver.kv_feed is None and not any(e.config.enable_kv_events for e in driver.engines)
    assert run.kv_event_batches == 0
