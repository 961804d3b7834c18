"""Named policies, reachable wherever a config is accepted (``epp serve --config-file``, replay's
``--policy``). Each preset is EndpointPickerConfig YAML built by the same loader as user configs, so
a preset is just a config and every policy this project compares is one."""

from __future__ import annotations

import random
from collections.abc import Mapping
from types import MappingProxyType
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from epp._util.clock import Clock
    from epp.scheduling.scheduler import Scheduler

_HEADER = "apiVersion: llm-d.ai/v1alpha1\nkind: EndpointPickerConfig\n"


def _config(plugins: str, profile: str) -> str:
    return f"{_HEADER}plugins:\n{plugins}schedulingProfiles:\n- name: default\n  plugins:\n{profile}"


PRESETS: Mapping[str, str] = MappingProxyType({
    # epp's default: the endpoint with the smallest predicted time to first token (queue wait + uncached
    # prefill, each endpoint's latency learned online from its own requests) plus 2× the prefill work a miss adds, random among
    # near-equals. The producer matches up to 128K prompt tokens so the prediction sees the whole hit.
    # Per endpoint it reads what the engine cached from its KV events (vLLM's default publisher,
    # tcp://<pod>:5557) once they prove to agree with epp's token keys (prompts tokenized with the served
    # model's own tokenizer and chat template, found from the model name); otherwise it falls back to an
    # index learned from picks that remembers twice what an engine can cache, and the predictor
    # discounts what was evicted since.
    "default": _config(
        "- {type: precise-prefix-cache-producer, parameters: {mode: connect, kvEventsPort: 5557, tokenizer: auto,"
        " maxPrefixTokensToMatch: 131072, lruCapacityPerServer: 62500}}\n"
        "- {type: ttft-predictor-scorer, parameters: {workWeight: 2}}\n"
        "- {type: max-score-picker}\n",
        "  - {pluginRef: ttft-predictor-scorer}\n  - {pluginRef: max-score-picker}\n",
    ),
    # Uniformly random endpoint.
    "random": _config("- {type: random-picker}\n", "  - {pluginRef: random-picker}\n"),
    # Take turns, ignoring load.
    "round-robin": _config("- {type: round-robin-picker}\n", "  - {pluginRef: round-robin-picker}\n"),
    # Shortest engine waiting queue (scraped), random among equals.
    "least-queue": _config(
        "- {type: queue-scorer}\n- {type: max-score-picker}\n",
        "  - {pluginRef: queue-scorer}\n  - {pluginRef: max-score-picker}\n",
    ),
    # Fewest requests in flight from this epp, random among equals.
    "least-inflight": _config(
        "- {type: active-request-scorer}\n- {type: max-score-picker}\n",
        "  - {pluginRef: active-request-scorer}\n  - {pluginRef: max-score-picker}\n",
    ),
    # GIE's behaviour without a config file.
    "gie-default": _config(
        "- {type: queue-scorer}\n- {type: kv-cache-utilization-scorer}\n- {type: prefix-cache-scorer}\n"
        "- {type: max-score-picker}\n",
        "  - {pluginRef: queue-scorer, weight: 2}\n  - {pluginRef: kv-cache-utilization-scorer, weight: 2}\n"
        "  - {pluginRef: prefix-cache-scorer, weight: 3}\n  - {pluginRef: max-score-picker}\n",
    ),
    # SGLang router's cache_aware policy with current sgl-router defaults: shortest queue when
    # imbalanced, else the longest approximate-tree match above the threshold, else the emptiest tree.
    "sglang-cache-aware": _config(
        "- {type: sglang-imbalance-filter, parameters: {balanceAbsThreshold: 64, balanceRelThreshold: 1.5}}\n"
        "- {type: sglang-cache-aware-scorer, parameters: {cacheThreshold: 0.3, evictionIntervalSecs: 120,"
        " maxTreeSize: 67108864}}\n"
        "- {type: max-score-picker}\n",
        "  - {pluginRef: sglang-imbalance-filter}\n  - {pluginRef: sglang-cache-aware-scorer}\n"
        "  - {pluginRef: max-score-picker}\n",
    ),
    # llm-d's current default, "sticky until saturated", as its optimized-baseline guide ships it
    # (llm-d/llm-d guides/optimized-baseline/router/optimized-baseline.values.yaml): the in-flight-load
    # and approximate prefix producers, prefix-cache-affinity-filter, token-load-scorer, the default
    # max-score picker. Per parameter (docs/llm-d-default.md has the table):
    # - maxPrefixTokensToMatch: the guide's rule "must match vLLM --max-model-len" (Llama-3.1-8B: 131072);
    # - affinityThreshold 0.80, maxTTFTPenaltyMs 18000, ttftSource prefillThroughput: the filter's
    #   defaults (llm-d-router pkg/epp/framework/plugins/scheduling/filter/prefixcacheaffinity/plugin.go,
    #   README.md); 18000 ms is calibrate.sh's T_MAX_SECONDS default;
    # - peakPrefillThroughput: the calibration rule (llm-d guides/recipes/router/calibration/README.md:
    #   chunk tokens / median cold TTFT of one --max-num-batched-tokens chunk) applied to the H100
    #   measurement epp ships (epp/engine/calibration data, shared/calibration): 8192 tokens of
    #   Llama-3.1-8B in 270.53 ms → 30281 tokens/s (upstream's default 15928 is Qwen3-32B on 2×H100);
    # - token-load-scorer queueThresholdTokens 4194304: the scorer's default
    #   (llm-d-router pkg/epp/framework/plugins/scheduling/scorer/tokenload/README.md).
    "llm-d-default": _config(
        "- {type: inflight-load-producer}\n"
        "- {type: approx-prefix-cache-producer, parameters: {maxPrefixTokensToMatch: 131072}}\n"
        "- {type: prefix-cache-affinity-filter, parameters: {affinityThreshold: 0.80, maxTTFTPenaltyMs: 18000,"
        " ttftSource: prefillThroughput, peakPrefillThroughput: 30281}}\n"
        "- {type: token-load-scorer, parameters: {queueThresholdTokens: 4194304}}\n"
        "- {type: max-score-picker}\n",
        "  - {pluginRef: prefix-cache-affinity-filter}\n  - {pluginRef: token-load-scorer}\n"
        "  - {pluginRef: max-score-picker}\n",
    ),
    "llm-d-predicted-latency": _config(
        # llm-d's predicted-latency routing as its guide ships it (llm-d guides/predicted-latency-routing/
        # router/predicted-latency.values.yaml, pluginsCustomConfig predicted-latency-plugins.yaml; the copy in
        # ../shared/upstream-epp-configs), the sidecar predictor replaced by epp's own (predicted-latency-
        # producer: epp.scheduling.plugins.predicted_latency). Per parameter:
        # - maxPrefixTokensToMatch 262144: the guide's value (sized there for 256K-context prompts);
        # - predicted-latency-producer: no parameters in the guide, so llm-d-router's DefaultConfig
        #   (dataproducer/predictedlatency: sloBufferFactor 1, contextTTL 5m, streamingMode false);
        # - loose-affinity-filter: affinityThreshold 0.8, ttftSource latencyPredictor, maxTTFTPenaltyMs 5000
        #   (the guide's);
        # - latency-scorer: no parameters, so its README defaults (ttftWeight 0.8, tpotWeight 0.2, least);
        # - weighted-random-picker: defaults.
        "- {type: approx-prefix-cache-producer, parameters: {maxPrefixTokensToMatch: 262144}}\n"
        "- {type: predicted-latency-producer}\n"
        "- {type: prefix-cache-affinity-filter, name: loose-affinity-filter, parameters: {affinityThreshold: 0.8,"
        " ttftSource: latencyPredictor, maxTTFTPenaltyMs: 5000}}\n"
        "- {type: latency-scorer}\n"
        "- {type: weighted-random-picker}\n",
        "  - {pluginRef: loose-affinity-filter}\n  - {pluginRef: latency-scorer}\n  - {pluginRef: weighted-random-picker}\n",
    ),
})

DEFAULT_PRESET = "default"


def build_preset(name: str, *, clock: Clock | None = None, rng: random.Random | None = None) -> Scheduler:
    """The named preset as a ``Scheduler`` (ValueError naming the known presets if unknown)."""
    if name not in PRESETS:
        raise ValueError(f"unknown policy preset {name!r}; known: {', '.join(sorted(PRESETS))}")
    from epp.config import load_scheduler_text  # the package imports this module: resolve at call time

    return load_scheduler_text(PRESETS[name], clock=clock, rng=rng)
