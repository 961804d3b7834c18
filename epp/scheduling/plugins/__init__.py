"""The plugins epp ships, one per module, and the table that names them (``BUILTIN_PLUGINS``).

``epp.scheduling.registry.builtin_registry()`` turns the table into a registry instance; nothing
here registers itself on import.
"""

from __future__ import annotations

from epp.scheduling import saturation
from epp.scheduling.plugins.filters import (
    header_based_testing,
    model_availability,
    owned_by,
    role,
    sglang_imbalance,
)
from epp.scheduling.plugins import predicted_latency
from epp.scheduling.plugins.pickers import max_score, random_picker, round_robin, weighted_random
from epp.scheduling.plugins.profiles import single
from epp.scheduling.plugins.response import served_verifier
from epp.scheduling.plugins.scorers import (
    active_request,
    kv_cache,
    load_aware,
    lora_affinity,
    no_hit_lru,
    prefix_cache,
    queue,
    running_requests,
    session_affinity,
    sglang_cache_aware,
    token_load,
    ttft_predictor,
)
from epp.scheduling.prefix import precise_producer, producer
from epp.scheduling.registry import PluginType

BUILTIN_PLUGINS: tuple[PluginType, ...] = (
    # data producers (built first)
    PluginType(producer.APPROX_PREFIX_CACHE_PRODUCER, producer.factory, producer=True),
    PluginType(precise_producer.PRECISE_PREFIX_CACHE_PRODUCER, precise_producer.factory, producer=True),
    PluginType(predicted_latency.PREDICTED_LATENCY_PRODUCER, predicted_latency.producer_factory, producer=True),
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
    # scorers
    PluginType(queue.QUEUE_SCORER, queue.factory),
    PluginType(running_requests.RUNNING_REQUESTS_SCORER, running_requests.factory),
    PluginType(kv_cache.KV_CACHE_UTILIZATION_SCORER, kv_cache.factory),
    PluginType(prefix_cache.PREFIX_CACHE_SCORER, prefix_cache.factory),
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
    # pickers
    PluginType(max_score.MAX_SCORE_PICKER, max_score.factory),
    PluginType(random_picker.RANDOM_PICKER, random_picker.factory),
    PluginType(weighted_random.WEIGHTED_RANDOM_PICKER, weighted_random.factory),
    PluginType(round_robin.ROUND_ROBIN_PICKER, round_robin.factory),
    # profile handlers
    PluginType(single.SINGLE_PROFILE_HANDLER, single.factory),
    # request control (the director asks admitters before scheduling, once it has that extension point)
    PluginType(predicted_latency.LATENCY_SLO_ADMITTER, predicted_latency.admitter_factory),
    # response phase
    PluginType(served_verifier.DESTINATION_ENDPOINT_SERVED_VERIFIER, served_verifier.factory),
)
