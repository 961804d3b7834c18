"""The engines' own prompt and cached-prompt token counters, mirrored per endpoint: the cached-token
series a default vLLM (no ``--enable-prompt-tokens-details``) still feeds."""

from __future__ import annotations

from pathlib import Path

from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from epp._util.clock import VirtualClock
from epp.datastore import Datastore
from epp.metrics import EngineExtractor, spec_for
from epp.telemetry import Telemetry
from tests.conftest import make_state

PAGE = Path(__file__).parents[1] / "metrics" / "data" / "vllm_0_32.prom"


def test_a_default_vllm_pages_cached_prompt_tokens_reach_epps_metrics() -> None:
    store = Datastore(VirtualClock(100.0), staleness_threshold=2.0)
    store.upsert(make_state("e0").endpoint)
    store.upsert(make_state("e1", address="10.0.0.2").endpoint)  # never scraped: no series
    store.update_metrics("e0", EngineExtractor(spec_for("vllm")).extract(PAGE.read_text(), 100.0))
    text = generate_latest(Telemetry(store, pool_name="pool").registry).decode()
    samples = {
        (s.name, s.labels.get("endpoint")): s.value
        for family in text_string_to_metric_families(text) for s in family.samples
    }  # fmt: skip
    assert samples[("epp_engine_prompt_tokens_cached_total", "e0")] == 1792
    assert samples[("epp_engine_prompt_tokens_total", "e0")] == 3243
    assert ("epp_engine_prompt_tokens_total", "e1") not in samples
