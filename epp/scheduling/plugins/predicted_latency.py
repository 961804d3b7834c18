"""llm-d's predicted-latency plugin chain on epp's own predictor (no sidecar).

Upstream (llm-d-router) ``predicted-latency-producer`` sends features to an XGBoost training sidecar
and asks a prediction sidecar for each candidate's TTFT and TPOT; ``slo-headroom-tier-filter``,
``latency-scorer`` and ``latency-slo-admitter`` read those predictions, and the SLO headers
``x-llm-d-slo-ttft-ms`` / ``x-llm-d-slo-tpot-ms``. Here the predictions come from epp's TTFT predictor
(``epp.scheduling.ttft``: this epp's ledger of work per endpoint, the prefix match, and each endpoint's
latency learned online from its own responses), so the same configs run without the sidecars:

* TTFT = the predictor's time to first token for this request on the endpoint;
* TPOT = the endpoint's learned decode step with this request added to what decodes there.

Headroom = SLO − predicted (TPOT's SLO × ``sloBufferFactor``); without an SLO header its SLO is 0,
so headroom is −predicted and every consumer simply prefers the lowest predicted latency, as upstream.

Parameters keep upstream's names; files cited from llm-d-router at the revision in
``../shared/upstream-epp-configs/SOURCES.md``:

* ``predicted-latency-producer`` (``pkg/epp/framework/plugins/requestcontrol/dataproducer/predictedlatency``,
  ``Config``/``DefaultConfig``): ``sloBufferFactor`` 1 (> 0), ``contextTTL`` 5m (how long a request is
  tracked: the predictor's ``requestTimeout``), ``streamingMode`` false (upstream trains TPOT only from
  streamed responses; epp learns from streamed responses either way — the flag is accepted as is),
  ``predictInProduce`` true (false: track and learn but publish no predictions, upstream's
  training-only mode), ``prefixMatchInfoProducerName``, ``inFlightLoadProducerName`` (epp's ledger
  is its in-flight load; a named producer must exist), ``endpointRoleLabel`` (P/D-aware features: not
  modelled, one warning), ``useEncoderCacheFeatures`` / ``encoderCacheMatchInfoProducerName``
  (multimodal encoder-cache features: not modelled, one warning), ``samplingMean`` and
  ``maxDecodeTokenSamplesForPrediction`` (deprecated upstream and ignored there, with one log line —
  the same here).
* ``latency-scorer`` (``pkg/epp/framework/plugins/scheduling/scorer/latency/README.md``): ``ttftWeight``
  0.8, ``tpotWeight`` 0.2, ``headroomSelectionStrategy`` ``least`` | ``most``, ``compositeKVWeight`` /
  ``compositeQueueWeight`` / ``compositePrefixWeight`` 1 (the fallback without predictions),
  ``latencyPredictionInfoProducerName``.
* ``predicted-latency-scorer``: upstream's earlier single plugin (producer and scorer in one,
  ``SLOAwareRouter``); epp builds a producer for it and scores as ``latency-scorer`` with
  ``headroomTTFTWeight``/``headroomTPOTWeight`` (0.8/0.2), ``negHeadroomTTFTWeight``/
  ``negHeadroomTPOTWeight`` (0.8/0.2), ``headroomSelectionStrategy``, the composite weights,
  ``epsilonExploreNeg`` 0.01 (the tier split) and ``affinityGateTau``/``affinityGateTauGlobal``/
  ``epsilonExploreSticky`` (0.80/0.99/0.01: keep only candidates whose prefix score reaches the gate,
  except with probability ε); ``samplingMean``/``maxSampledTokens``/``selectionMode`` are accepted
  as upstream's later versions accept them (no mid-stream sampling here).
* ``slo-headroom-tier-filter`` (``pkg/epp/framework/plugins/scheduling/filter/sloheadroomtier``):
  ``epsilonExploreNeg`` 0.01, ``latencyPredictionInfoProducerName``.
* ``latency-slo-admitter`` (``pkg/epp/framework/plugins/requestcontrol/admitter/latencyslo/README.md``):
  no parameters but ``latencyPredictionInfoProducerName``; a sheddable request (priority < 0) with an
  SLO header is refused when no candidate is predicted to meet it, is idle, or is cold (KV < 2 %).
"""

from __future__ import annotations

import logging
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from epp.datastore import Endpoint, EndpointState
from epp.request import LLMRequest
from epp.plugin.typed_name import TypedName
from epp.scheduling.framework import CycleState, SchedulingResult
from epp.plugin.params import Duration, ParamError, decode_params
from epp.scheduling.plugins.scorers.ttft_predictor import TTFTPredictorParams, TTFTPredictorScorer, find_prefix_producer
from epp.plugin.registry import PluginHandle

log = logging.getLogger(__name__)

PREDICTED_LATENCY_PRODUCER = "predicted-latency-producer"
LATENCY_SCORER = "latency-scorer"
PREDICTED_LATENCY_SCORER = "predicted-latency-scorer"
SLO_HEADROOM_TIER_FILTER = "slo-headroom-tier-filter"
LATENCY_SLO_ADMITTER = "latency-slo-admitter"
TTFT_SLO_HEADER = "x-llm-d-slo-ttft-ms"
TPOT_SLO_HEADER = "x-llm-d-slo-tpot-ms"
COLD_KV_USAGE = 0.02
"""An endpoint this empty can take a request whatever its prediction (the admitter's "cold")."""


@dataclass(frozen=True, slots=True)
class LatencyPrediction:
    """One endpoint's prediction for one request, in milliseconds (upstream's ``LatencyPredictionInfo``)."""

    ttft_ms: float
    tpot_ms: float
    ttft_headroom: float
    tpot_headroom: float
    dispatched: int
    """Requests this epp has in flight there."""
    prefix_score: float
    """Share of the prompt's blocks the endpoint holds (0..1)."""

    @property
    def positive(self) -> bool:
        return self.ttft_headroom >= 0 and self.tpot_headroom >= 0


def slo_ms(request: LLMRequest, header: str) -> float:
    """An SLO header's value in ms; 0 when absent or not a number (upstream logs and uses 0)."""
    value = request.headers.get(header)
    if value is None:
        return 0.0
    try:
        parsed = float(value)
    except ValueError:
        return 0.0
    return parsed if parsed > 0 else 0.0


@dataclass(frozen=True, slots=True)
class ProducerParams:
    sampling_mean: float = 1000.0
    max_decode_token_samples_for_prediction: int = 0
    slo_buffer_factor: float = 1.0
    context_ttl: Duration = field(default=Duration(300.0), metadata={"key": "contextTTL"})
    streaming_mode: bool = False
    endpoint_role_label: str = ""
    predict_in_produce: bool = True
    prefix_match_info_producer_name: str | None = None
    in_flight_load_producer_name: str | None = None
    use_encoder_cache_features: bool = False
    encoder_cache_match_info_producer_name: str | None = None

    def __post_init__(self) -> None:
        if self.slo_buffer_factor <= 0:
            raise ParamError("sloBufferFactor", "must be > 0")
        if self.context_ttl <= 0:
            raise ParamError("contextTTL", "must be positive")


class PredictedLatencyProducer:
    """Predicts every candidate's TTFT and TPOT once per scheduling cycle (kept in the cycle for every
    consumer), and follows each request's life through the predictor's hooks."""

    def __init__(self, predictor: TTFTPredictorScorer, name: str, params: ProducerParams) -> None:
        self.typed_name = TypedName(PREDICTED_LATENCY_PRODUCER, name)
        self.predictor = predictor
        self.params = params
        self._key = f"latency/{name}"

    def latency(self, cycle: CycleState, request: LLMRequest, endpoints: Sequence[EndpointState]) -> list[LatencyPrediction] | None:
        """Per endpoint (aligned), the prediction; None in training-only mode (``predictInProduce: false``)."""
        if not self.params.predict_in_produce:
            return None
        cached = cycle.get(self._key)
        names = [e.name for e in endpoints]
        if cached is not None and cached[0] == names:
            result: list[LatencyPrediction] = cached[1]
            return result
        states = list(endpoints)
        predictions, ledgers = self.predictor.predictions(cycle, request, states)
        info, hits = self.predictor.producer.match(cycle, request, states)
        ttft_slo = slo_ms(request, TTFT_SLO_HEADER)
        tpot_slo = slo_ms(request, TPOT_SLO_HEADER) * self.params.slo_buffer_factor
        learner, predictor = self.predictor.learner, self.predictor.predictor.predictor
        prompt = request.estimated_prompt_tokens
        out = []
        for i, state in enumerate(states):
            load = predictor.decode_load(state, ledgers[i])
            tpot = learner.estimate(state.name).decode_step_seconds(load.sequences + 1, load.context_tokens + prompt) * 1e3
            ttft = float(predictions.ttft[i]) * 1e3
            score = hits[i] / info.total if info.total else 0.0
            out.append(LatencyPrediction(ttft, tpot, ttft_slo - ttft, tpot_slo - tpot, len(ledgers[i]), score))
        cycle[self._key] = (names, out)
        return out

    def predicted_ttft_ms(self, cycle: CycleState, request: LLMRequest, endpoints: list[EndpointState]) -> Sequence[float | None]:
        """What ``prefix-cache-affinity-filter`` with ``ttftSource: latencyPredictor`` reads."""
        found = self.latency(cycle, request, endpoints)
        return [None] * len(endpoints) if found is None else [p.ttft_ms for p in found]

    # -- the predictor's hooks ----------------------------------------------------------------------
    def pre_request(self, cycle: CycleState, request: LLMRequest, result: SchedulingResult) -> None:
        self.predictor.pre_request(cycle, request, result)

    def response_started(self, request: LLMRequest, endpoint: EndpointState) -> None:
        self.predictor.response_started(request, endpoint)

    def response_complete(self, request: LLMRequest, endpoint: EndpointState, usage: Mapping[str, int]) -> None:
        self.predictor.response_complete(request, endpoint, usage)

    def endpoint_added(self, endpoint: Endpoint) -> None:
        self.predictor.endpoint_added(endpoint)

    def endpoint_removed(self, endpoint: Endpoint) -> None:
        self.predictor.endpoint_removed(endpoint)


def _warn_unmodelled(name: str, p: ProducerParams, handle: PluginHandle) -> None:
    if p.endpoint_role_label:
        log.warning("%s: endpointRoleLabel %r: P/D-aware prediction features are not modelled; endpoints are "
                    "predicted alike whatever their role", name, p.endpoint_role_label)
    if p.use_encoder_cache_features or p.encoder_cache_match_info_producer_name:
        log.warning("%s: multimodal encoder-cache features are not modelled by epp's predictor; ignored", name)
    if p.sampling_mean != 1000.0 or p.max_decode_token_samples_for_prediction != 0:
        log.info("%s: deprecated samplingMean and maxDecodeTokenSamplesForPrediction are ignored (as upstream)", name)
    if p.in_flight_load_producer_name and p.in_flight_load_producer_name not in handle.plugins:
        raise ParamError("inFlightLoadProducerName", f"no plugin named {p.in_flight_load_producer_name!r}")


def producer_factory(name: str, params: Mapping[str, Any], handle: PluginHandle) -> PredictedLatencyProducer:
    p = decode_params(ProducerParams, params)
    _warn_unmodelled(name, p, handle)
    return _build_producer(name, p, handle)


def _build_producer(name: str, p: ProducerParams, handle: PluginHandle) -> PredictedLatencyProducer:
    inner = TTFTPredictorParams(request_timeout=p.context_ttl, prefix_match_info_producer_name=p.prefix_match_info_producer_name)
    prefix = find_prefix_producer(f"{name}-prefix", p.prefix_match_info_producer_name, handle)
    return PredictedLatencyProducer(TTFTPredictorScorer(prefix, handle.clock, f"{name}-ttft", inner), name, p)


def find_producer(handle: PluginHandle, wanted: str | None, name: str) -> PredictedLatencyProducer:
    """The named latency producer, else the first configured one, else one created for ``name``."""
    if wanted:
        found = handle.plugins.get(wanted)
        if not isinstance(found, PredictedLatencyProducer):
            raise ParamError("latencyPredictionInfoProducerName", f"no {PREDICTED_LATENCY_PRODUCER} named {wanted!r}")
        return found
    configured = next((q for q in handle.plugins.values() if isinstance(q, PredictedLatencyProducer)), None)
    if configured is not None:
        return configured
    own = PREDICTED_LATENCY_PRODUCER if handle.available(PREDICTED_LATENCY_PRODUCER) else f"{name}-producer"
    created = _build_producer(own, ProducerParams(), handle)
    handle.add(created)
    return created


# -- latency-scorer ------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class LatencyScorerParams:
    ttft_weight: float = field(default=0.8, metadata={"key": "ttftWeight"})
    tpot_weight: float = field(default=0.2, metadata={"key": "tpotWeight"})
    headroom_selection_strategy: str = "least"
    composite_kv_weight: float = field(default=1.0, metadata={"key": "compositeKVWeight"})
    composite_queue_weight: float = 1.0
    composite_prefix_weight: float = 1.0
    latency_prediction_info_producer_name: str | None = None

    def __post_init__(self) -> None:
        for key, value in (("ttftWeight", self.ttft_weight), ("tpotWeight", self.tpot_weight),
                           ("compositeKVWeight", self.composite_kv_weight),
                           ("compositeQueueWeight", self.composite_queue_weight),
                           ("compositePrefixWeight", self.composite_prefix_weight)):
            if value < 0:
                raise ParamError(key, "must not be negative")
        if self.headroom_selection_strategy not in ("least", "most"):
            raise ParamError("headroomSelectionStrategy", "must be 'least' or 'most'")


def _normalized(values: Sequence[float]) -> list[float] | None:
    """Min-max to [0, 1]; None when all are equal (the dimension carries no information)."""
    low, high = min(values), max(values)
    if high <= low:
        return None
    return [(v - low) / (high - low) for v in values]


def headroom_scores(
    predictions: Sequence[LatencyPrediction], ttft_weight: float, tpot_weight: float, strategy: str,
    neg_weights: tuple[float, float] | None = None,
) -> list[float]:
    """upstream ``latency-scorer``'s scoring: only the positive tier scores when both tiers exist; with
    only negative headroom, idle endpoints first, then the least severe deficit bucket (only TPOT
    violated, only TTFT, both); within the scored set TTFT and TPOT headroom are min-max normalised
    (a dimension whose range is 0 gives its weight to the other) and blended; ``least`` prefers the
    endpoint closest to its SLO (1 − blend), ``most`` the one with the most headroom (positive only)."""
    n = len(predictions)
    scores = [0.0] * n
    positive = [i for i, p in enumerate(predictions) if p.positive]
    negative_only = not positive
    chosen = positive or list(range(n))
    if negative_only:
        idle = [i for i in chosen if predictions[i].dispatched == 0]
        if idle:
            chosen = idle
        else:
            buckets = (
                [i for i in chosen if predictions[i].ttft_headroom >= 0 > predictions[i].tpot_headroom],
                [i for i in chosen if predictions[i].tpot_headroom >= 0 > predictions[i].ttft_headroom],
                [i for i in chosen if predictions[i].ttft_headroom < 0 and predictions[i].tpot_headroom < 0],
            )
            chosen = next((b for b in buckets if b), chosen)
        if neg_weights is not None:
            ttft_weight, tpot_weight = neg_weights
    if len(chosen) == 1:
        scores[chosen[0]] = 1.0
        return scores
    ttft = _normalized([predictions[i].ttft_headroom for i in chosen])
    tpot = _normalized([predictions[i].tpot_headroom for i in chosen])
    if ttft is None and tpot is None:  # all alike: all equally good
        for i in chosen:
            scores[i] = 1.0
        return scores
    a = ttft_weight if ttft is not None else 0.0  # a zero-range dimension gives its weight to the other
    b = tpot_weight if tpot is not None else 0.0
    if a + b == 0:
        a, b = (1.0, 0.0) if ttft is not None else (0.0, 1.0)
    most = strategy == "most" and not negative_only  # negative headroom: always the least severe deficit
    for k, i in enumerate(chosen):
        blend = (a * (ttft[k] if ttft is not None else 0.0) + b * (tpot[k] if tpot is not None else 0.0)) / (a + b)
        # normalised high = more headroom: "least" keeps the endpoint closest to its SLO when all meet it
        # (bin-packing), and the smallest deficit when none does
        scores[i] = blend if most or negative_only else 1.0 - blend
    return scores


def composite_scores(endpoints: Sequence[EndpointState], prefix: Sequence[float], weights: tuple[float, float, float]) -> list[float]:
    """Fallback without predictions: free KV, short queue and prefix score, weighted (upstream's composite)."""
    kv_w, queue_w, prefix_w = weights
    total = kv_w + queue_w + prefix_w or 1.0
    queues = [e.metrics.waiting if e.metrics is not None and not e.stale else 0 for e in endpoints]
    longest = max(queues, default=0) or 1
    out = []
    for e, q, pre in zip(endpoints, queues, prefix):
        kv = e.metrics.kv_usage if e.metrics is not None and not e.stale else 0.0
        out.append((kv_w * (1 - kv) + queue_w * (1 - q / longest) + prefix_w * pre) / total)
    return out


class LatencyScorer:
    def __init__(self, producer: PredictedLatencyProducer, name: str, params: LatencyScorerParams,
                 plugin_type: str = LATENCY_SCORER) -> None:
        self.typed_name = TypedName(plugin_type, name)
        self.producer = producer
        self.params = params

    def score(self, cycle: CycleState, request: LLMRequest, endpoints: list[EndpointState]) -> list[float]:
        p = self.params
        predictions = self.producer.latency(cycle, request, endpoints)
        if predictions is None:
            info, hits = self.producer.predictor.producer.match(cycle, request, endpoints)
            prefix = [h / info.total if info.total else 0.0 for h in hits]
            return composite_scores(endpoints, prefix, (p.composite_kv_weight, p.composite_queue_weight, p.composite_prefix_weight))
        return headroom_scores(predictions, p.ttft_weight, p.tpot_weight, p.headroom_selection_strategy)


def latency_scorer_factory(name: str, params: Mapping[str, Any], handle: PluginHandle) -> LatencyScorer:
    p = decode_params(LatencyScorerParams, params)
    return LatencyScorer(find_producer(handle, p.latency_prediction_info_producer_name, name), name, p)


# -- predicted-latency-scorer (upstream's earlier single plugin) ----------------------------------------
@dataclass(frozen=True, slots=True)
class PredictedLatencyScorerParams:
    sampling_mean: float = 1000.0
    max_sampled_tokens: int = 5
    slo_buffer_factor: float = 1.0
    neg_headroom_ttft_weight: float = field(default=0.8, metadata={"key": "negHeadroomTTFTWeight"})
    neg_headroom_tpot_weight: float = field(default=0.2, metadata={"key": "negHeadroomTPOTWeight"})
    headroom_ttft_weight: float = field(default=0.8, metadata={"key": "headroomTTFTWeight"})
    headroom_tpot_weight: float = field(default=0.2, metadata={"key": "headroomTPOTWeight"})
    headroom_selection_strategy: str = "least"
    composite_kv_weight: float = field(default=1.0, metadata={"key": "compositeKVWeight"})
    composite_queue_weight: float = 1.0
    composite_prefix_weight: float = 1.0
    epsilon_explore_sticky: float = 0.01
    epsilon_explore_neg: float = 0.01
    affinity_gate_tau: float = 0.80
    affinity_gate_tau_global: float = 0.99
    context_ttl: Duration = field(default=Duration(300.0), metadata={"key": "contextTTL"})
    selection_mode: str = "linear"
    streaming_mode: bool = True
    endpoint_role_label: str = ""

    def __post_init__(self) -> None:
        for key, value in (("epsilonExploreSticky", self.epsilon_explore_sticky), ("epsilonExploreNeg", self.epsilon_explore_neg),
                           ("affinityGateTau", self.affinity_gate_tau)):
            if not 0.0 <= value <= 1.0:
                raise ParamError(key, "must be in [0, 1]")
        if not 0.0 < self.affinity_gate_tau_global <= 1.0:
            raise ParamError("affinityGateTauGlobal", "must be in (0, 1]")
        if self.slo_buffer_factor <= 0:
            raise ParamError("sloBufferFactor", "must be > 0")
        if self.headroom_selection_strategy not in ("least", "most", "composite-least", "composite-most", "composite-only"):
            raise ParamError("headroomSelectionStrategy", "must be least, most, composite-least, composite-most or composite-only")
        for key, value in (("negHeadroomTTFTWeight", self.neg_headroom_ttft_weight), ("negHeadroomTPOTWeight", self.neg_headroom_tpot_weight),
                           ("headroomTTFTWeight", self.headroom_ttft_weight), ("headroomTPOTWeight", self.headroom_tpot_weight)):
            if value < 0:
                raise ParamError(key, "must not be negative")


class PredictedLatencyScorer:
    """Affinity gate (global τ, then τ within the tier), the 99 %/1 % tier split, then headroom scores."""

    def __init__(self, producer: PredictedLatencyProducer, name: str, params: PredictedLatencyScorerParams, rng: random.Random) -> None:
        self.typed_name = TypedName(PREDICTED_LATENCY_SCORER, name)
        self.producer = producer
        self.params = params
        self.rng = rng

    def _gate(self, indices: list[int], predictions: Sequence[LatencyPrediction], tau: float) -> list[int]:
        eligible = [i for i in indices if predictions[i].prefix_score >= tau]
        if not eligible or tau <= 0 or self.rng.random() < self.params.epsilon_explore_sticky:
            return indices
        return eligible

    def score(self, cycle: CycleState, request: LLMRequest, endpoints: list[EndpointState]) -> list[float]:
        p = self.params
        predictions = self.producer.latency(cycle, request, endpoints)
        composite = p.headroom_selection_strategy.startswith("composite")
        if predictions is None or composite:
            info, hits = self.producer.predictor.producer.match(cycle, request, endpoints)
            prefix = [h / info.total if info.total else 0.0 for h in hits]
            return composite_scores(endpoints, prefix, (p.composite_kv_weight, p.composite_queue_weight, p.composite_prefix_weight))
        candidates = self._gate(list(range(len(endpoints))), predictions, p.affinity_gate_tau_global)
        positive = [i for i in candidates if predictions[i].positive]
        negative = [i for i in candidates if not predictions[i].positive]
        tier = negative if positive and negative and self.rng.random() < p.epsilon_explore_neg else (positive or negative)
        tier = self._gate(tier, predictions, p.affinity_gate_tau)
        scored = headroom_scores([predictions[i] for i in tier], p.headroom_ttft_weight, p.headroom_tpot_weight,
                                 p.headroom_selection_strategy, (p.neg_headroom_ttft_weight, p.neg_headroom_tpot_weight))
        scores = [0.0] * len(endpoints)
        for i, s in zip(tier, scored):
            scores[i] = s
        return scores


def predicted_latency_scorer_factory(name: str, params: Mapping[str, Any], handle: PluginHandle) -> PredictedLatencyScorer:
    p = decode_params(PredictedLatencyScorerParams, params)
    if p.endpoint_role_label:
        log.warning("%s: endpointRoleLabel %r: P/D-aware prediction features are not modelled", name, p.endpoint_role_label)
    producer = find_producer(handle, None, name)
    producer.params = replace(producer.params, slo_buffer_factor=p.slo_buffer_factor)
    return PredictedLatencyScorer(producer, name, p, handle.child_rng())


# -- slo-headroom-tier-filter ------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class TierFilterParams:
    epsilon_explore_neg: float = 0.01
    latency_prediction_info_producer_name: str | None = None

    def __post_init__(self) -> None:
        if not 0.0 <= self.epsilon_explore_neg <= 1.0:
            raise ParamError("epsilonExploreNeg", "must be in [0, 1]")


class SLOHeadroomTierFilter:
    """Keep the positive-headroom tier (both SLOs met), or with probability ``epsilonExploreNeg`` the
    negative one, when both exist; one tier: keep it; no predictions: keep all."""

    def __init__(self, producer: PredictedLatencyProducer, name: str, params: TierFilterParams, rng: random.Random) -> None:
        self.typed_name = TypedName(SLO_HEADROOM_TIER_FILTER, name)
        self.producer = producer
        self.params = params
        self.rng = rng

    def filter(self, cycle: CycleState, request: LLMRequest, endpoints: list[EndpointState]) -> list[EndpointState]:
        predictions = self.producer.latency(cycle, request, endpoints)
        if predictions is None:
            return endpoints
        positive = [e for e, p in zip(endpoints, predictions) if p.positive]
        if not positive or len(positive) == len(endpoints):
            return endpoints
        if self.rng.random() < self.params.epsilon_explore_neg:
            return [e for e, p in zip(endpoints, predictions) if not p.positive]
        return positive


def tier_filter_factory(name: str, params: Mapping[str, Any], handle: PluginHandle) -> SLOHeadroomTierFilter:
    p = decode_params(TierFilterParams, params)
    return SLOHeadroomTierFilter(find_producer(handle, p.latency_prediction_info_producer_name, name), name, p, handle.child_rng())


# -- latency-slo-admitter ----------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class AdmitterParams:
    latency_prediction_info_producer_name: str | None = None


class LatencySLOAdmitter:
    """Refuses a sheddable request (priority < 0) that carries an SLO when no endpoint is predicted to
    meet it and none is idle (nothing in flight from this epp) or cold (KV usage < 2 %). Requests
    without an SLO header, and non-sheddable ones, are always let in."""

    def __init__(self, producer: PredictedLatencyProducer, name: str) -> None:
        self.typed_name = TypedName(LATENCY_SLO_ADMITTER, name)
        self.producer = producer

    def admit(self, request: LLMRequest, endpoints: Sequence[EndpointState]) -> str | None:
        if request.priority >= 0 or not endpoints:
            return None
        if not slo_ms(request, TTFT_SLO_HEADER) and not slo_ms(request, TPOT_SLO_HEADER):
            return None
        predictions = self.producer.latency(CycleState(), request, list(endpoints))
        if predictions is None:
            return None
        for state, p in zip(endpoints, predictions):
            cold = state.metrics is not None and not state.stale and state.metrics.kv_usage < COLD_KV_USAGE
            if p.positive or p.dispatched == 0 or cold:
                return None
        return "latency-slo: no endpoint is predicted to meet the request's SLO"


def admitter_factory(name: str, params: Mapping[str, Any], handle: PluginHandle) -> LatencySLOAdmitter:
    p = decode_params(AdmitterParams, params)
    return LatencySLOAdmitter(find_producer(handle, p.latency_prediction_info_producer_name, name), name)
