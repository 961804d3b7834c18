from __future__ import annotations

from pathlib import Path

import pytest

from epp.datastore import EndpointMetrics
from epp.metrics import EngineExtractor, MetricsError, engine_kind, spec_for

DATA = Path(__file__).parent / "data"
LLAMA = frozenset({"meta-llama/Llama-3.1-8B-Instruct"})


def extract(engine: str, text: str, at: float = 7.0) -> EndpointMetrics:
    return EngineExtractor(spec_for(engine)).extract(text, at)


def page(name: str) -> str:
    return (DATA / name).read_text()


@pytest.mark.parametrize(
    ("engine", "fixture", "expected"),
    [
        pytest.param(
            "vllm", "vllm.prom",
            EndpointMetrics(7.0, waiting=3, running=12, kv_usage=0.4375, active_loras=frozenset({"sql-lora", "tweet-lora"}),
                            waiting_loras=frozenset({"chat-lora"}), max_lora=4, block_size=16, num_gpu_blocks=74272, models=LLAMA,
                            prompt_tokens=2531829, cached_prompt_tokens=1216279),
            id="vllm-current",
        ),
        pytest.param(
            # Two data-parallel engines: as in the reference, the first series (engine 0) wins.
            "vllm", "vllm_dp2.prom",
            EndpointMetrics(7.0, waiting=3, running=12, kv_usage=0.4375, active_loras=frozenset({"sql-lora", "tweet-lora"}),
                            waiting_loras=frozenset({"chat-lora"}), max_lora=4, block_size=16, num_gpu_blocks=74272, models=LLAMA,
                            prompt_tokens=6625039, cached_prompt_tokens=974060),
            id="vllm-dp2-first-series",
        ),
        pytest.param(
            # A real vLLM 0.32 page (../shared/engines/vllm-0.32-cpu/captures/vllm_metrics.txt): 36-label
            # cache_config_info with "None" values, prompt_tokens_cached_total, no gpu_* names.
            "vllm", "vllm_0_32.prom",
            EndpointMetrics(7.0, waiting=0, running=0, kv_usage=0.0, block_size=128, num_gpu_blocks=16384,
                            models=frozenset({"tiny-llama"}), prompt_tokens=3243, cached_prompt_tokens=1792),
            id="vllm-0.32-captured",
        ),
        pytest.param(
            "vllm", "vllm_legacy.prom",
            EndpointMetrics(7.0, waiting=5, running=7, kv_usage=0.8125, max_lora=2, block_size=32, num_gpu_blocks=27910,
                            models=frozenset({"mistralai/Mistral-7B-Instruct-v0.3"})),
            id="vllm-legacy-gpu-cache-usage",
        ),
        pytest.param(
            # Newest timestamp wins per family; an untimestamped series loses to timestamped ones.
            "vllm", "vllm_timestamps.prom",
            EndpointMetrics(7.0, waiting=9, running=2, kv_usage=0.25, block_size=64, num_gpu_blocks=2000,
                            models=frozenset({"base-a", "base-b", "base-c"})),
            id="vllm-timestamps-multi-model",
        ),
        pytest.param(
            "sglang", "sglang.prom",
            EndpointMetrics(7.0, waiting=2, running=17, kv_usage=0.21, block_size=1, num_gpu_blocks=196352,
                            models=frozenset({"Qwen/Qwen3-32B"}), prompt_tokens=9.1823e07),
            id="sglang-page-gauges",
        ),
        pytest.param(
            "sglang", "sglang_old.prom",
            EndpointMetrics(7.0, waiting=0, running=1, kv_usage=0.0, block_size=1, num_gpu_blocks=200000,
                            models=frozenset({"Qwen/Qwen3-0.6B"})),
            id="sglang-cache-config-info",
        ),
        pytest.param(
            "trtllm-serve", "trtllm.prom",
            EndpointMetrics(7.0, waiting=1, running=4, kv_usage=0.055374130342183726, block_size=32, num_gpu_blocks=21129,
                            models=frozenset({"Qwen/Qwen3-8B"})),
            id="trtllm-serve",
        ),
        pytest.param(
            "triton-tensorrt-llm", "triton_trtllm.prom",
            EndpointMetrics(7.0, waiting=2, running=6, kv_usage=0.1005859375, block_size=64, num_gpu_blocks=4096),
            id="triton-tensorrt-llm-label-selectors",
        ),
        pytest.param(
            "triton", "triton.prom",
            EndpointMetrics(7.0, waiting=3, running=5120),
            id="triton-no-kv",
        ),
    ],
)
def test_engine_pages_map_to_snapshots(engine: str, fixture: str, expected: EndpointMetrics) -> None:
    assert extract(engine, page(fixture)) == expected


def test_current_vllm_kv_name_wins_over_legacy() -> None:
    text = page("vllm.prom") + 'vllm:gpu_cache_usage_perc{model_name="m"} 0.99\n'
    assert extract("vllm", text).kv_usage == 0.4375


def test_engine_selection_by_label_and_unknown_falls_back_to_vllm() -> None:
    assert engine_kind("sglang") == "sglang"
    assert engine_kind("some-new-engine") == "vllm"
    with pytest.raises(MetricsError, match="sglang:num_queue_reqs"):
        extract("sglang", page("vllm.prom"))


def test_lora_family_absent_means_no_lora_data() -> None:
    text = "\n".join(line for line in page("vllm.prom").splitlines() if "lora_requests_info" not in line)
    m = extract("vllm", text)
    assert (m.active_loras, m.waiting_loras, m.max_lora) == (frozenset(), frozenset(), None)


def test_lora_adapter_lists_are_trimmed_and_empty_max_is_none() -> None:
    text = (
        "vllm:num_requests_waiting 0\nvllm:num_requests_running 0\nvllm:kv_cache_usage_perc 0\n"
        'vllm:lora_requests_info{max_lora="",running_lora_adapters=" a , b,,",waiting_lora_adapters=" c"} 5\n'
        'vllm:lora_requests_info{max_lora="8",running_lora_adapters="old",waiting_lora_adapters=""} 4\n'
    )
    m = extract("vllm", text)
    assert (m.active_loras, m.waiting_loras, m.max_lora) == (frozenset({"a", "b"}), frozenset({"c"}), None)


def test_malformed_line_in_a_family_we_do_not_read_is_ignored() -> None:
    text = page("vllm.prom").replace("python_info{", "python_info{{broken", 1)
    assert extract("vllm", text).waiting == 3


def test_memo_does_not_leak_between_pages() -> None:
    extractor = EngineExtractor(spec_for("vllm"), memo_size=2)
    first = extractor.extract(page("vllm.prom"), 1.0)
    second = extractor.extract(page("vllm.prom").replace('Llama-3.1-8B-Instruct"} 3.0', 'Llama-3.1-8B-Instruct"} 11.0'), 2.0)
    third = extractor.extract(page("vllm.prom"), 3.0)
    assert (first.waiting, second.waiting, third.waiting) == (3, 11, 3)


GOOD = "vllm:num_requests_waiting 1\nvllm:num_requests_running 2\nvllm:kv_cache_usage_perc 0.5\n"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        pytest.param("", "missing family vllm:num_requests_waiting", id="empty"),
        pytest.param("<html><body>502 Bad Gateway</body></html>", "missing family", id="html"),
        pytest.param(GOOD.replace("vllm:num_requests_running 2\n", ""), "vllm:num_requests_running", id="missing-running"),
        pytest.param(GOOD.replace("vllm:kv_cache_usage_perc 0.5\n", ""), "missing KV usage", id="missing-kv"),
        pytest.param(GOOD.replace(" 2\n", " NaN\n"), "not a finite", id="nan"),
        pytest.param(GOOD.replace(" 0.5\n", " +Inf\n"), "not a finite", id="inf"),
        pytest.param(GOOD.replace(" 1\n", " -1\n"), "not a finite", id="negative"),
        pytest.param(GOOD + 'vllm:num_requests_waiting{model_name="x', "unparsable", id="truncated-labels"),
        pytest.param(GOOD.replace(" 2\n", "\n"), "unparsable", id="truncated-value"),
        pytest.param(GOOD.replace(" 2\n", " two\n"), "unparsable", id="bad-value"),
        pytest.param(GOOD + 'vllm:cache_config_info{block_size="sixteen"} 1\n', "block_size", id="bad-int-label"),
        pytest.param(GOOD + 'vllm:lora_requests_info{max_lora="4"} NaN\n', "not a finite", id="nan-lora"),
    ],
)
def test_bad_pages_raise_metrics_error(text: str, message: str) -> None:
    with pytest.raises(MetricsError, match=message):
        extract("vllm", text)


def test_good_minimal_page_maps() -> None:
    assert extract("vllm", GOOD) == EndpointMetrics(7.0, waiting=1, running=2, kv_usage=0.5)


def test_none_labels_of_vllm_0_32s_cache_config_info_are_absent_values() -> None:
    """vLLM writes an unset config value as the string "None" (num_gpu_blocks before profiling)."""
    text = page("vllm_0_32.prom").replace('num_gpu_blocks="16384"', 'num_gpu_blocks="None"')
    snapshot = extract("vllm", text)
    assert (snapshot.block_size, snapshot.num_gpu_blocks) == (128, None)


def test_older_vllm_counts_cached_prompt_tokens_as_prefix_cache_hits() -> None:
    text = "\n".join(line for line in page("vllm_0_32.prom").splitlines() if "prompt_tokens_cached" not in line)
    text = text.replace(" 1792.0", " 1700.0")  # the hits counter's value, told apart from the removed one's
    assert extract("vllm", text).cached_prompt_tokens == 1700
