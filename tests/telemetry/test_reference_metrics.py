"""The reference's metric families as a scraper sees them: exposition text parsed with prometheus_client's
parser, recorded by a real scheduler (plugin timings, prefix indexer) and by the request recorder."""

from __future__ import annotations

import random

import pytest
from prometheus_client import generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families

from epp._util.clock import VirtualClock
from epp.datastore import Datastore, EndpointMetrics
from epp.request import RequestError
from epp.request.usage import Usage
from epp.plugin.typed_name import TypedName
from epp.scheduling.framework import CycleState
from epp.scheduling.plugins.pickers.max_score import MaxScorePicker
from epp.scheduling.plugins.profiles.single import SingleProfileHandler
from epp.scheduling.plugins.scorers.prefix_cache import PrefixCacheScorer
from epp.scheduling.prefix.producer import ApproxPrefixCacheProducer, PrefixIndexParams
from epp.config.presets import build_preset
from epp.scheduling.profile import SchedulerProfile, WeightedScorer
from epp.scheduling.scheduler import Scheduler
from epp.telemetry import Telemetry
from tests.conftest import make_request, make_state, make_states

PLUGIN_LE = ["0.0001", "0.0002", "0.0005", "0.001", "0.002", "0.005", "0.01", "0.02", "0.05", "0.1", "+Inf"]


def scrape(t: Telemetry) -> dict[str, Metric]:
    return {m.name: m for m in text_string_to_metric_families(generate_latest(t.registry).decode())}


def sample(families: dict[str, Metric], family: str, suffix: str = "", **labels: str) -> float | None:
    for s in families[family].samples:
        if s.name == family + suffix and all(s.labels.get(k) == v for k, v in labels.items()):
            return s.value
    return None


def les(families: dict[str, Metric], family: str) -> list[str]:
    return [s.labels["le"] for s in families[family].samples if s.name.endswith("_bucket")]


def test_every_plugin_call_is_timed_under_both_names_with_the_reference_buckets() -> None:
    t = Telemetry()
    scheduler = build_preset("gie-default", clock=VirtualClock(), rng=random.Random(1))
    t.instrument(scheduler)
    states = make_states(3)
    for _ in range(4):
        request = make_request(prompt=b"p" * 640)
        picked = scheduler.schedule(request, states).endpoints[0]
        scheduler.response_complete(request, picked, {})
    families = scrape(t)
    for family in ("inference_extension_plugin_duration_seconds", "llm_d_epp_plugin_duration_seconds"):
        assert families[family].type == "histogram"
        series = {(s.labels["extension_point"], s.labels["plugin_type"], s.labels["plugin_name"]): s.value
                  for s in families[family].samples if s.name.endswith("_count")}
        assert series == {
            ("ProfilePicker", "single-profile-handler", "single-profile-handler"): 8,  # run, then "none left"
            ("ProcessProfilesResults", "single-profile-handler", "single-profile-handler"): 4,
            ("Scorer", "queue-scorer", "queue-scorer"): 4,
            ("Scorer", "kv-cache-utilization-scorer", "kv-cache-utilization-scorer"): 4,
            ("Scorer", "prefix-cache-scorer", "prefix-cache-scorer"): 4,
            ("Picker", "max-score-picker", "max-score-picker"): 4,
            ("PreRequest", "approx-prefix-cache-producer", "approx-prefix-cache-producer"): 4,
            # releases what PreRequest booked (undone instead when the request fails)
            ("ResponseComplete", "approx-prefix-cache-producer", "approx-prefix-cache-producer"): 4,
        }
        assert les(families, family)[: len(PLUGIN_LE)] == PLUGIN_LE
        total = sample(families, family, "_sum", extension_point="Scorer", plugin_type="prefix-cache-scorer")
        assert total is not None and 0 < total < 1  # seconds, not nanoseconds


def test_filter_and_response_hooks_are_timed_and_a_failing_hook_still_counts() -> None:
    class DropNone:
        typed_name = TypedName("keep-all-filter", "keep")

        def filter(self, cycle: CycleState, request: object, endpoints: list) -> list:  # type: ignore[type-arg]
            return endpoints

    class Broken:
        typed_name = TypedName("broken-hook", "broken")

        def response_complete(self, request: object, endpoint: object, usage: object) -> None:
            raise RuntimeError("boom")

        def response_headers(self, request: object, endpoint: object) -> dict[str, str]:
            return {}

        def response_started(self, request: object, endpoint: object) -> None:
            pass

    class Received:
        typed_name = TypedName("received-hook", "received")

        def response_received(self, request: object, endpoint: object, metadata: object) -> dict[str, str]:
            return {}

    scheduler = Scheduler({"p": SchedulerProfile("p", MaxScorePicker(), filters=[DropNone()])}, SingleProfileHandler(),
                          plugins=[Broken(), Received()])
    t = Telemetry()
    t.instrument(scheduler)
    request, state = make_request(), make_states(1)
    scheduler.schedule(request, state)
    scheduler.response_headers(request, state[0])
    scheduler.response_started(request, state[0])
    scheduler.response_complete(request, state[0], {})
    families = scrape(t)
    family = "inference_extension_plugin_duration_seconds"
    for point, plugin in (("Filter", "keep-all-filter"), ("ResponseReceived", "broken-hook"),
                          ("ResponseReceived", "received-hook"),
                          ("ResponseStreaming", "broken-hook"), ("ResponseComplete", "broken-hook")):
        assert sample(families, family, "_count", extension_point=point, plugin_type=plugin) == 1, point

    scheduler.instrument(None)  # uninstrumented: nothing more is recorded
    scheduler.schedule(request, state)
    assert sample(scrape(t), family, "_count", extension_point="Filter") == 1


def test_prefix_indexer_metrics_follow_the_reference_semantics() -> None:
    """hit_ratio = blocks the chosen endpoint held / blocks hashed; hit_bytes = held blocks × block
    tokens × 4; size = (block, endpoint) entries; GIE's series unlabelled, llm-d's per plugin."""
    producer = ApproxPrefixCacheProducer(params=PrefixIndexParams(auto_tune=False, block_size_tokens=16))
    scheduler = Scheduler(
        {"p": SchedulerProfile("p", MaxScorePicker(rng=random.Random(1)), scorers=[WeightedScorer(PrefixCacheScorer(producer))])},
        SingleProfileHandler(), plugins=[producer],
    )
    t = Telemetry()
    t.instrument(scheduler)
    states = make_states(2)
    prompt = b"x" * (64 * 10)  # 10 blocks of 16 tokens × 4 bytes
    scheduler.schedule(make_request(prompt=prompt), states)  # cold: 0 of 10
    scheduler.schedule(make_request(prompt=prompt), states)  # the holder wins: 10 of 10
    scheduler.schedule(make_request(prompt=prompt[:320] + b"y" * 320), states)  # 5 of 10 held
    families = scrape(t)
    for prefix, labels in (("inference_extension_prefix_indexer", {}),
                           ("llm_d_epp_prefix_indexer", {"plugin_name": "approx-prefix-cache-producer",
                                                         "plugin_type": "approx-prefix-cache-producer"})):
        ratio, hit_bytes = f"{prefix}_hit_ratio", f"{prefix}_hit_bytes"
        assert sample(families, ratio, "_count", **labels) == 3
        assert sample(families, ratio, "_sum", **labels) == pytest.approx(1.5)
        assert sample(families, ratio, "_bucket", le="0.0", **labels) == 1
        assert sample(families, ratio, "_bucket", le="0.5", **labels) == 2
        assert sample(families, hit_bytes, "_sum", **labels) == (10 + 5) * 16 * 4
        assert les(families, hit_bytes)[:3] == ["0.0", "16.0", "32.0"]
        assert sample(families, f"{prefix}_size", **labels) == producer.entries() == 15
    assert families["inference_extension_prefix_indexer_hit_ratio"].samples[0].labels.keys() == {"le"}


def test_normalized_time_per_output_token_is_duration_over_completion_tokens() -> None:
    t = Telemetry()
    request = make_request(fairness_id="team-a", priority=2)
    t.request_routed(request, 100)
    t.request_finished(request, 2.0, 50, Usage(prompt_tokens=7, completion_tokens=10))
    t.request_finished(request, 3.0, 50, Usage(prompt_tokens=7, completion_tokens=0))  # no tokens: no NTPOT
    t.request_finished(request, 3.0, None, Usage())
    families = scrape(t)
    gie = "inference_objective_normalized_time_per_output_token_seconds"
    assert sample(families, gie, "_count", model_name="m", target_model_name="m") == 1
    assert sample(families, gie, "_sum", model_name="m", target_model_name="m") == pytest.approx(0.2)
    assert les(families, gie)[:3] == ["0.001", "0.002", "0.005"]
    llmd = dict(model_name="m", target_model_name="m", fairness_id="team-a", priority="2")
    assert sample(families, "llm_d_epp_request_ntpot_seconds", "_sum", **llmd) == pytest.approx(0.2)
    # token counts of 0 are not recorded, as in the reference
    assert sample(families, "inference_objective_output_tokens", "_count", model_name="m") == 1


def test_llm_d_twins_carry_fairness_and_priority_and_llm_d_names() -> None:
    clock = VirtualClock(100.0)
    store = Datastore(clock, staleness_threshold=2.0)
    store.upsert(make_state("e0").endpoint)
    store.upsert(make_state("e1", address="10.0.0.2").endpoint)
    store.update_metrics("e0", EndpointMetrics(scraped_at=100.0, waiting=2, running=1, kv_usage=0.2))
    store.update_metrics("e1", EndpointMetrics(scraped_at=100.0, waiting=6, running=3, kv_usage=0.6))
    t = Telemetry(store, pool_name="pool", build_ref="v1")
    request = make_request(fairness_id="team-a", priority=-1)
    t.request_routed(request, 1000)
    t.scheduled(0.0005, "m", store.get("e0"))
    t.request_rejected("m", "m", RequestError(429, "busy"), request)
    t.model_rewritten("rule", "m", "m-v2")
    families = scrape(t)
    llmd = dict(model_name="m", target_model_name="m", fairness_id="team-a", priority="-1")
    assert sample(families, "llm_d_epp_request", "_total", **llmd) == 1
    assert sample(families, "inference_objective_request", "_total", model_name="m", priority="-1") == 1
    assert sample(families, "llm_d_epp_request_size_bytes", "_sum", **llmd) == 1000
    assert sample(families, "llm_d_epp_request_running", **llmd) == 1
    assert sample(families, "inference_objective_running_requests", model_name="m") == 1
    assert sample(families, "llm_d_epp_request_error", "_total", error_code="InferencePoolResourceExhausted", **llmd) == 1
    assert sample(families, "llm_d_epp_scheduler_attempts", "_total", status="success", endpoint_name="e0", port="8000") == 1
    assert sample(families, "inference_extension_scheduler_attempts", "_total", status="success", pod_name="e0") == 1
    assert sample(families, "llm_d_epp_scheduler_e2e_duration_seconds", "_count") == 1
    assert sample(families, "llm_d_epp_info", build_ref="v1") == 1
    for family in ("inference_extension_model_rewrite_decisions", "llm_d_epp_model_rewrite_decisions"):
        assert sample(families, family, "_total", model_rewrite_name="rule", target_model="m-v2") == 1
    assert sample(families, "llm_d_epp_ready_endpoints", name="pool") == 2
    assert sample(families, "llm_d_epp_average_queue_size", name="pool") == 4
    assert sample(families, "llm_d_epp_std_dev_queue_size", name="pool") == 2
    assert sample(families, "llm_d_epp_std_dev_kv_cache_utilization", name="pool") == pytest.approx(0.2)
    assert sample(families, "llm_d_epp_per_endpoint_queue_size", name="pool", model_server_endpoint="e1") == 6
    assert "inference_extension_prefix_indexer_size" not in families  # no prefix producer: absent, as in GIE


def test_histogram_buckets_match_the_reference() -> None:
    families = scrape_after_one_request()
    powers = [f"{float(2**i)}" for i in range(3, 14)]
    assert les(families, "inference_objective_output_tokens") == ["1.0", *powers, "+Inf"]
    assert les(families, "inference_objective_response_sizes") == ["1.0", *powers, "16384.0", "32768.0", "65536.0", "+Inf"]
    assert les(families, "llm_d_epp_request_input_tokens")[-3:] == ["524288.0", "1.048576e+06", "+Inf"]


def scrape_after_one_request() -> dict[str, Metric]:
    t = Telemetry()
    request = make_request()
    t.request_routed(request, 10)
    t.request_finished(request, 1.0, 10, Usage(prompt_tokens=1, completion_tokens=1, cached_tokens=0))
    return scrape(t)
