"""``prefix-cache-affinity-filter`` (llm-d ``filter/prefixcacheaffinity``): "sticky until saturated".

Per request: with probability ``explorationProbability`` keep every candidate; else the sticky set is
the candidates whose prefix score (leading blocks held / prompt blocks, from the prefix producer) is
≥ ``affinityThreshold``. No sticky candidate → keep all. Otherwise keep only the sticky ones, unless a
load gate breaks stickiness (keep all):

* TTFT gate (``maxTTFTPenaltyMs`` > 0, default 18,000): best sticky TTFT − best non-sticky TTFT >
  the penalty. TTFT per endpoint is in-flight tokens / ``peakPrefillThroughput`` × 1000 ms
  (``ttftSource: prefillThroughput``, the default) or the latency predictor's (``latencyPredictor``).
  A side with no signal skips the gate and keeps all (llm-d's ``missing_signal``).
* token gate (``maxTokensInFlightPenalty`` > 0; the key llm-d's guides still set, off by default):
  best sticky in-flight tokens − best non-sticky in-flight tokens > the penalty.

In-flight tokens come from the ``inflight-load-producer`` (``inFlightLoadProducerName``, else the
configured one), else from epp's own counters. ``peakPrefillThroughput`` resolves as upstream:
explicit value > a ``prefillCalibrationFile`` record whose fingerprint matches
``prefillCalibrationFingerprint`` > the built-in 15,928 tokens/s (Qwen3-32B, 2×H100 TP=2, vLLM 0.19).
The calibration rule (llm-d ``guides/recipes/router/calibration``): peak = chunk tokens
(``--max-num-batched-tokens``) / median cold TTFT of one such chunk.
"""

from __future__ import annotations

import json
import logging
import math
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from epp.datastore import EndpointState
from epp.request import LLMRequest
from epp.plugin.typed_name import TypedName
from epp.scheduling.framework import CycleState
from epp.plugin.params import ParamError, decode_params
from epp.scheduling.plugins.producers.inflight_load import InFlightLoadProducer, find_inflight_load, inflight_tokens
from epp.scheduling.plugins.scorers.prefix_cache import PrefixScorerParams, resolve_producer
from epp.scheduling.prefix.producer import ApproxPrefixCacheProducer
from epp.plugin.registry import PluginHandle

log = logging.getLogger(__name__)

PREFIX_CACHE_AFFINITY_FILTER = "prefix-cache-affinity-filter"
PREFILL_THROUGHPUT = "prefillThroughput"
LATENCY_PREDICTOR = "latencyPredictor"
DEFAULT_PEAK_PREFILL_THROUGHPUT = 15928.0
CALIBRATION_SCHEMA_VERSION = 1
MIN_CALIBRATION_SAMPLES = 10


@runtime_checkable
class TTFTPredictions(Protocol):
    """What a latency-prediction producer offers the ``latencyPredictor`` gate: predicted TTFT in ms
    per endpoint (None where it has no prediction)."""

    def predicted_ttft_ms(self, cycle: CycleState, request: LLMRequest, endpoints: list[EndpointState]) -> Sequence[float | None]: ...


@dataclass(frozen=True, slots=True)
class AffinityParams:
    affinity_threshold: float = 0.80
    exploration_probability: float = 0.0
    max_ttft_penalty_ms: float = field(default=18000.0, metadata={"key": "maxTTFTPenaltyMs"})
    ttft_source: str = PREFILL_THROUGHPUT
    peak_prefill_throughput: float = DEFAULT_PEAK_PREFILL_THROUGHPUT
    prefill_calibration_file: str | None = None
    prefill_calibration_fingerprint: str | None = None
    prefill_calibration_required: bool = False
    max_tokens_in_flight_penalty: int = 0
    prefix_match_info_producer_name: str | None = None
    latency_prediction_info_producer_name: str | None = None
    in_flight_load_producer_name: str | None = None

    def __post_init__(self) -> None:
        checks = (
            ("affinityThreshold", 0.0 <= self.affinity_threshold <= 1.0, "must be in [0, 1]"),
            ("explorationProbability", 0.0 <= self.exploration_probability <= 1.0, "must be in [0, 1]"),
            ("maxTTFTPenaltyMs", self.max_ttft_penalty_ms >= 0, "must not be negative"),
            ("peakPrefillThroughput", self.peak_prefill_throughput >= 0, "must not be negative"),
            ("maxTokensInFlightPenalty", self.max_tokens_in_flight_penalty >= 0, "must not be negative"),
            ("ttftSource", self.ttft_source in (PREFILL_THROUGHPUT, LATENCY_PREDICTOR),
             f"must be {PREFILL_THROUGHPUT!r} or {LATENCY_PREDICTOR!r}"),
        )
        for key, ok, why in checks:
            if not ok:
                raise ParamError(key, why)


class PrefixCacheAffinityFilter:
    def __init__(
        self, producer: ApproxPrefixCacheProducer, name: str = PREFIX_CACHE_AFFINITY_FILTER,
        params: AffinityParams | None = None, load: InFlightLoadProducer | None = None,
        predictions: TTFTPredictions | None = None, rng: random.Random | None = None,
    ) -> None:
        self.typed_name = TypedName(PREFIX_CACHE_AFFINITY_FILTER, name)
        self.producer = producer
        self.params = params or AffinityParams()
        self.load = load
        self.predictions = predictions
        self.rng = rng or random.Random()

    def filter(self, cycle: CycleState, request: LLMRequest, endpoints: list[EndpointState]) -> list[EndpointState]:
        p = self.params
        if len(endpoints) <= 1 or p.affinity_threshold <= 0:
            return endpoints
        if p.exploration_probability > 0 and self.rng.random() < p.exploration_probability:
            return endpoints
        info, hits = self.producer.match(cycle, request, endpoints)
        total = info.total
        threshold = p.affinity_threshold
        sticky_at = [i for i, h in enumerate(hits) if total > 0 and h / total >= threshold]
        if not sticky_at:
            return endpoints
        sticky = [endpoints[i] for i in sticky_at]
        if len(sticky) == len(endpoints):
            return endpoints
        chosen = set(sticky_at)
        rest = [i for i in range(len(endpoints)) if i not in chosen]
        if p.max_ttft_penalty_ms > 0:
            ttft = self._ttft_ms(cycle, request, endpoints)
            best_sticky = _best(ttft, sticky_at)
            best_other = _best(ttft, rest)
            if best_sticky is None or best_other is None:  # missing signal: keep all, as upstream
                return endpoints
            if best_sticky - best_other > p.max_ttft_penalty_ms:
                return endpoints
        if p.max_tokens_in_flight_penalty > 0:
            tokens = inflight_tokens(self.load, endpoints)
            if min(tokens[i] for i in sticky_at) - min(tokens[i] for i in rest) > p.max_tokens_in_flight_penalty:
                return endpoints
        return sticky

    def _ttft_ms(self, cycle: CycleState, request: LLMRequest, endpoints: list[EndpointState]) -> Sequence[float | None]:
        if self.params.ttft_source == LATENCY_PREDICTOR:
            if self.predictions is None:
                return [None] * len(endpoints)
            return self.predictions.predicted_ttft_ms(cycle, request, endpoints)
        per_token_ms = 1000.0 / self.params.peak_prefill_throughput
        return [t * per_token_ms for t in inflight_tokens(self.load, endpoints)]


def _best(values: Sequence[float | None], at: list[int]) -> float | None:
    known = [v for i in at if (v := values[i]) is not None]
    return min(known) if known else None


def calibrated_throughput(path: str, fingerprint: str | None) -> float:
    """The record's peak prefill throughput, or ValueError saying why it cannot be applied (llm-d
    ``calibration.go``: schema 1, status OK, finite positive value, ≥ 10 samples, same fingerprint)."""
    try:
        record = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"cannot read calibration record {path}: {err}") from None
    if not isinstance(record, dict):
        raise ValueError(f"calibration record {path} is not a JSON object")

    def positive(key: str) -> float:
        value = record.get(key)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
            raise ValueError(f"{key} is missing or not a positive finite number")
        return float(value)

    if record.get("schema_version") != CALIBRATION_SCHEMA_VERSION:
        raise ValueError(f"schema_version is {record.get('schema_version')!r}, want {CALIBRATION_SCHEMA_VERSION}")
    if record.get("status") != "OK":
        raise ValueError(f"status is {record.get('status')!r}, want 'OK'")
    peak = positive("peak_prefill_tokens_per_second")
    positive("chunk_tokens")
    positive("median_ttft_seconds")
    samples = record.get("valid_samples")
    if not isinstance(samples, int) or samples < MIN_CALIBRATION_SAMPLES:
        raise ValueError(f"valid_samples is {samples!r}, want at least {MIN_CALIBRATION_SAMPLES}")
    if not record.get("fingerprint"):
        raise ValueError("record carries no fingerprint")
    if not fingerprint:
        raise ValueError("no prefillCalibrationFingerprint is configured for this deployment")
    if record["fingerprint"] != fingerprint:
        raise ValueError(f"record was measured on a different deployment: fingerprint {record['fingerprint']!r}, want {fingerprint!r}")
    return peak


def _resolve_throughput(name: str, p: AffinityParams, explicit: bool) -> AffinityParams:
    """Upstream's precedence: explicit value > matching calibration record > default."""
    if p.ttft_source == LATENCY_PREDICTOR or explicit:
        return p
    reason = None
    if p.prefill_calibration_file:
        try:
            peak = calibrated_throughput(p.prefill_calibration_file, p.prefill_calibration_fingerprint)
        except ValueError as err:
            reason = f"calibration not applied: {err}"
        else:
            log.info("%s: peakPrefillThroughput %g from calibration record %s", name, peak, p.prefill_calibration_file)
            return replace(p, peak_prefill_throughput=peak)
    elif p.prefill_calibration_required:
        reason = "prefillCalibrationRequired is set but prefillCalibrationFile is empty"
    if reason is not None:
        if p.prefill_calibration_required:
            raise ParamError("prefillCalibrationFile", reason)
        log.warning("%s: %s; keeping peakPrefillThroughput %g", name, reason, p.peak_prefill_throughput)
    return p


def _predictions(handle: PluginHandle, p: AffinityParams, name: str) -> TTFTPredictions | None:
    wanted = p.latency_prediction_info_producer_name
    found = handle.plugins.get(wanted) if wanted else handle.by_type("predicted-latency-producer")
    if isinstance(found, TTFTPredictions):
        return found
    log.warning("%s: ttftSource latencyPredictor but no latency-prediction producer%s offers predictions; "
                "the TTFT gate has no signal and keeps every candidate", name, f" named {wanted!r}" if wanted else "")
    return None


def factory(name: str, params: Mapping[str, Any], handle: PluginHandle) -> PrefixCacheAffinityFilter:
    p = decode_params(AffinityParams, params)
    p = _resolve_throughput(name, p, explicit="peakPrefillThroughput" in params)
    if p.ttft_source == PREFILL_THROUGHPUT and p.max_ttft_penalty_ms > 0 and p.peak_prefill_throughput == 0:
        raise ParamError("peakPrefillThroughput", "must be > 0 when ttftSource is prefillThroughput")
    if p.max_tokens_in_flight_penalty:
        log.info("%s: maxTokensInFlightPenalty is the older, token form of the load gate (current llm-d: "
                 "maxTTFTPenaltyMs with peakPrefillThroughput); both gates apply as configured", name)
    producer = resolve_producer(name, {}, PrefixScorerParams(p.prefix_match_info_producer_name), handle)
    load = find_inflight_load(handle, p.in_flight_load_producer_name, "inFlightLoadProducerName")
    uses_predictor = p.ttft_source == LATENCY_PREDICTOR and p.max_ttft_penalty_ms > 0
    predictions = _predictions(handle, p, name) if uses_predictor else None
    return PrefixCacheAffinityFilter(producer, name, p, load, predictions, handle.child_rng())
