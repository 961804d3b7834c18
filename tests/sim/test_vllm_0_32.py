"""The simulator's vLLM surface against a real vLLM 0.32's captures: metric families and their label
names (``tests/metrics/data/vllm_0_32.prom``), ``usage`` without ``--enable-prompt-tokens-details``."""

from __future__ import annotations

import time
from pathlib import Path

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from epp.engine.config import EngineConfig
from epp.engine.core import EngineCore
from epp.sim.metrics import SimMetrics
from tests.sim.conftest import run_sim
from tests.sim.helpers import MODEL, post

CAPTURE = Path(__file__).parents[1] / "metrics" / "data" / "vllm_0_32.prom"


def shape(text: str) -> dict[str, set[tuple[str, ...]]]:
    """vllm: sample name → the label-name sets its series carry (bucket ``le`` and ``_created`` aside)."""
    out: dict[str, set[tuple[str, ...]]] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name.startswith("vllm:") and not s.name.endswith("_created"):
                out.setdefault(s.name, set()).add(tuple(sorted(k for k in s.labels if k != "le")))
    return out


def page(legacy: bool = False, loras: tuple[str, ...] = ()) -> str:
    core = EngineCore(EngineConfig(lora_adapters=loras))
    return SimMetrics(core, engine="vllm", model_name="m", wall_time=time.time, legacy=legacy).render().decode()


def test_the_vllm_page_has_exactly_vllm_0_32s_series_and_labels() -> None:
    assert shape(page()) == shape(CAPTURE.read_text())


def test_cache_config_info_has_vllm_0_32s_labels_with_none_for_unset_values() -> None:
    def labels(text: str) -> dict[str, str]:
        family = next(f for f in text_string_to_metric_families(text) if f.name == "vllm:cache_config_info")
        return dict(family.samples[0].labels)

    ours, theirs = labels(page()), labels(CAPTURE.read_text())
    assert ours.keys() == theirs.keys()  # 36 config labels and engine
    assert ours["num_cpu_blocks"] == theirs["num_cpu_blocks"] == "None"
    assert ours["block_size"] == "16" and ours["prefix_caching_hash_algo"] == "sha256"


def test_legacy_names_and_lora_info_only_when_asked_for() -> None:
    assert not any(name.startswith(("vllm:gpu_", "vllm:time_per_output_token")) for name in shape(page()))
    legacy = shape(page(legacy=True))
    assert {"vllm:gpu_cache_usage_perc", "vllm:gpu_prefix_cache_hits_total",
            "vllm:time_per_output_token_seconds_count"} <= legacy.keys()  # fmt: skip
    assert "vllm:lora_requests_info" not in shape(page()) and "vllm:lora_requests_info" in shape(page(loras=("a",)))


async def test_usage_has_no_prompt_tokens_details_by_default() -> None:
    with run_sim("--time-scale", "0") as sim:
        async with aiohttp.ClientSession() as s:
            status, body = await post(s, f"{sim.url}/v1/completions", {"model": MODEL, "prompt": "hi", "max_tokens": 2})
    assert status == 200
    assert body["usage"] == {"prompt_tokens": 1, "total_tokens": 3, "completion_tokens": 2,
                             "prompt_tokens_details": None, "completion_tokens_details": None}  # fmt: skip
