"""Every plugin type epp ships — scheduling plugins (``epp.scheduling.plugins``), data sources and
extractors (``epp.metrics.plugins``), request parsers (``epp.request.parsers``) — in the one table that
names them (``BUILTIN_PLUGINS``), as GIE's runner registers its plugins in one place.

The table sits in the config layer, above every package whose plugins it lists, so none of them has to
import another to be registered. ``builtin_registry()`` turns it into a registry instance; nothing
registers itself on import.
"""

from __future__ import annotations

from epp.request.parsers import PARSER_PLUGINS
from epp.scheduling import saturation
from epp.scheduling.plugins.admission import concurrency_detector, probabilistic_admitter
from epp.metrics.plugins import dcgm, models, multicluster_metrics
from epp.scheduling.plugins.datalayer import topology
from epp.scheduling.plugins.filters import (
    endpoint_attribute,
    header_based_testing,
    label_selector,
    multicluster_session_affinity,
    model_availability,
    owned_by,
    prefix_cache_affinity,
    role,
    sglang_imbalance,
    topology_affinity,
    utilization,
)
from epp.scheduling.plugins import predicted_latency
from epp.scheduling.plugins.pickers import max_score, random_picker, round_robin, weighted_random
from epp.scheduling.plugins.producers import burst_prefix, inflight_load, mm_embeddings
from epp.scheduling.plugins.profiles import deciders, disagg, header, single
from epp.scheduling.plugins.requestcontrol import agent_identity, disaggregatedset_rollout, request_attribute_reporter
from epp.scheduling.plugins.response import served_verifier
from epp.scheduling.plugins.scorers import endpoint_attribute as endpoint_attribute_scorer
from epp.scheduling.plugins.scorers import (
    active_request,
    context_length_aware,
    header_label_affinity,
    kv_cache,
    load_aware,
    lora_affinity,
    multicluster_kv_cache,
    multicluster_queue,
    no_hit_lru,
    prefix_cache,
    queue,
    running_requests,
    session_affinity,
    sglang_cache_aware,
    token_load,
    ttft_predictor,
)
from epp.scheduling.plugins.scorers import topology_affinity as topology_affinity_scorer
from epp.scheduling.prefix import llmd, precise_producer, producer
from epp.plugin.registry import PluginRegistry, PluginType

BUILTIN_PLUGINS: tuple[PluginType, ...] = (
    # data producers (built first; token producers before the precise producer that reads them)
    PluginType(llmd.TOKEN_PRODUCER, llmd.token_producer_factory(llmd.TOKEN_PRODUCER), producer=True),
    PluginType(llmd.LEGACY_TOKEN_PRODUCER, llmd.token_producer_factory(llmd.LEGACY_TOKEN_PRODUCER), producer=True),
    PluginType(producer.APPROX_PREFIX_CACHE_PRODUCER, producer.factory, producer=True),
    PluginType(precise_producer.PRECISE_PREFIX_CACHE_PRODUCER, precise_producer.factory, producer=True),
    PluginType(predicted_latency.PREDICTED_LATENCY_PRODUCER, predicted_latency.producer_factory, producer=True),
    PluginType(inflight_load.INFLIGHT_LOAD_PRODUCER, inflight_load.factory, producer=True),
    PluginType(burst_prefix.BURST_PREFIX_CACHE_PRODUCER, burst_prefix.factory, producer=True),
    PluginType(mm_embeddings.MM_EMBEDDINGS_CACHE_PRODUCER, mm_embeddings.producer_factory, producer=True),
    # data sources and extractors other than the engines' /metrics (polled by epp.metrics.sources)
    PluginType(dcgm.DCGM_DATA_SOURCE, dcgm.source_factory, producer=True),
    PluginType(dcgm.DCGM_EXTRACTOR, dcgm.extractor_factory, producer=True),
    PluginType(models.MODELS_DATA_SOURCE, models.source_factory, producer=True),
    PluginType(models.MODELS_DATA_EXTRACTOR, models.extractor_factory, producer=True),
    PluginType(topology.TOPOLOGY_EXTRACTOR, topology.extractor_factory, producer=True),
    PluginType(multicluster_metrics.MULTICLUSTER_METRICS_DATA_SOURCE, multicluster_metrics.source_factory, producer=True, alpha=True),
    PluginType(multicluster_metrics.MULTICLUSTER_METRICS_EXTRACTOR, multicluster_metrics.extractor_factory, producer=True, alpha=True),
    # disaggregation deciders: built before the profile handler that names them
    PluginType(deciders.ALWAYS_DISAGG_PD_DECIDER, deciders.always_pd_factory, producer=True),
    PluginType(deciders.PREFIX_BASED_PD_DECIDER, deciders.prefix_based_factory, producer=True),
    PluginType(deciders.ALWAYS_DISAGG_MULTIMODAL_DECIDER, deciders.multimodal_factory, producer=True),
    # filters
    PluginType(model_availability.MODEL_AVAILABILITY_FILTER, model_availability.factory),
    PluginType(owned_by.OWNED_BY_FILTER, owned_by.factory),
    PluginType(role.PREFILL_FILTER, role.factory_for(role.PREFILL_FILTER)),
    PluginType(role.DECODE_FILTER, role.factory_for(role.DECODE_FILTER)),
    PluginType(role.ENCODE_FILTER, role.factory_for(role.ENCODE_FILTER)),
    PluginType(header_based_testing.HEADER_BASED_TESTING_FILTER, header_based_testing.factory),
    PluginType(sglang_imbalance.SGLANG_IMBALANCE_FILTER, sglang_imbalance.factory),
    PluginType(saturation.UTILIZATION_DETECTOR, saturation.factory),
    PluginType(predicted_latency.SLO_HEADROOM_TIER_FILTER, predicted_latency.tier_filter_factory),
    # admission
    PluginType(concurrency_detector.CONCURRENCY_DETECTOR, concurrency_detector.factory),
    PluginType(probabilistic_admitter.PROBABILISTIC_ADMITTER, probabilistic_admitter.factory),
    PluginType(prefix_cache_affinity.PREFIX_CACHE_AFFINITY_FILTER, prefix_cache_affinity.factory),
    PluginType(label_selector.LABEL_SELECTOR_FILTER, label_selector.factory),
    PluginType(endpoint_attribute.ENDPOINT_ATTRIBUTE_FILTER, endpoint_attribute.factory),
    PluginType(utilization.UTILIZATION_FILTER, utilization.factory),
    PluginType(topology_affinity.TOPOLOGY_AFFINITY_FILTER, topology_affinity.factory),
    PluginType(multicluster_session_affinity.MULTICLUSTER_SESSION_AFFINITY_FILTER, multicluster_session_affinity.factory, alpha=True),
    PluginType(context_length_aware.CONTEXT_LENGTH_AWARE, context_length_aware.factory),  # filter and scorer
    # scorers
    PluginType(queue.QUEUE_SCORER, queue.factory),
    PluginType(running_requests.RUNNING_REQUESTS_SCORER, running_requests.factory),
    PluginType(kv_cache.KV_CACHE_UTILIZATION_SCORER, kv_cache.factory),
    PluginType(prefix_cache.PREFIX_CACHE_SCORER, prefix_cache.factory),
    PluginType(prefix_cache.PRECISE_PREFIX_CACHE_SCORER, prefix_cache.precise_factory),
    PluginType(load_aware.LOAD_AWARE_SCORER, load_aware.factory),
    PluginType(active_request.ACTIVE_REQUEST_SCORER, active_request.factory),
    PluginType(token_load.TOKEN_LOAD_SCORER, token_load.factory),
    PluginType(lora_affinity.LORA_AFFINITY_SCORER, lora_affinity.factory),
    PluginType(session_affinity.SESSION_AFFINITY_SCORER, session_affinity.factory),
    PluginType(no_hit_lru.NO_HIT_LRU_SCORER, no_hit_lru.factory),
    PluginType(sglang_cache_aware.SGLANG_CACHE_AWARE_SCORER, sglang_cache_aware.factory),
    PluginType(ttft_predictor.TTFT_PREDICTOR_SCORER, ttft_predictor.factory),
    PluginType(predicted_latency.LATENCY_SCORER, predicted_latency.latency_scorer_factory),
    PluginType(predicted_latency.PREDICTED_LATENCY_SCORER, predicted_latency.predicted_latency_scorer_factory),
    PluginType(endpoint_attribute_scorer.ENDPOINT_ATTRIBUTE_SCORER, endpoint_attribute_scorer.factory),
    PluginType(header_label_affinity.HEADER_LABEL_AFFINITY_SCORER, header_label_affinity.factory),
    PluginType(topology_affinity_scorer.TOPOLOGY_AFFINITY_SCORER, topology_affinity_scorer.factory),
    PluginType(mm_embeddings.MM_EMBEDDINGS_CACHE_SCORER, mm_embeddings.scorer_factory),
    PluginType(multicluster_queue.MULTICLUSTER_QUEUE_SCORER, multicluster_queue.factory, alpha=True),
    PluginType(multicluster_kv_cache.MULTICLUSTER_KV_CACHE_SCORER, multicluster_kv_cache.factory, alpha=True),
    # pickers
    PluginType(max_score.MAX_SCORE_PICKER, max_score.factory),
    PluginType(random_picker.RANDOM_PICKER, random_picker.factory),
    PluginType(weighted_random.WEIGHTED_RANDOM_PICKER, weighted_random.factory),
    PluginType(round_robin.ROUND_ROBIN_PICKER, round_robin.factory),
    # profile handlers
    PluginType(single.SINGLE_PROFILE_HANDLER, single.factory),
    # request control (the director asks admitters before scheduling, once it has that extension point)
    PluginType(predicted_latency.LATENCY_SLO_ADMITTER, predicted_latency.admitter_factory),
    PluginType(header.HEADER_PROFILE_HANDLER, header.factory),
    PluginType(disagg.DISAGG_PROFILE_HANDLER, disagg.disagg_factory),
    PluginType(disagg.PD_PROFILE_HANDLER, disagg.pd_factory),
    PluginType(disagg.DATA_PARALLEL_PROFILE_HANDLER, disagg.data_parallel_factory),
    PluginType(disagg.DISAGG_HEADERS_HANDLER, disagg.headers_factory_for(disagg.DISAGG_HEADERS_HANDLER)),
    PluginType(disagg.PREFILL_HEADER_HANDLER, disagg.headers_factory_for(disagg.PREFILL_HEADER_HANDLER)),
    # request control
    PluginType(agent_identity.AGENT_IDENTITY, agent_identity.factory),
    PluginType(request_attribute_reporter.REQUEST_ATTRIBUTE_REPORTER, request_attribute_reporter.factory),
    PluginType(disaggregatedset_rollout.DISAGGREGATEDSET_ROLLOUT_SCREENER, disaggregatedset_rollout.factory),
    # response phase
    PluginType(served_verifier.DESTINATION_ENDPOINT_SERVED_VERIFIER, served_verifier.factory),
    # request parsers (requestHandler.parsers; epp.request.parsers)
    *PARSER_PLUGINS,
)


def builtin_registry() -> PluginRegistry:
    """Every plugin epp ships, under the reference's type names."""
    return PluginRegistry(BUILTIN_PLUGINS)
