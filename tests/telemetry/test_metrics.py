from __future__ import annotations

import urllib.request

import asyncio

from epp._util.clock import VirtualClock
from epp.datastore import Datastore, Endpoint, EndpointMetrics
from epp.request import RequestError
from epp.telemetry import Telemetry, error_code
from epp.telemetry.http import MetricsServer


def test_pool_gauges_average_only_fresh_endpoints() -> None:
    clock = VirtualClock(100.0)
    store = Datastore(clock, staleness_threshold=2.0)
    for i in range(3):
        store.upsert(Endpoint(f"e{i}", f"10.0.0.{i}", 8000))
    store.update_metrics("e0", EndpointMetrics(scraped_at=100.0, waiting=4, running=2, kv_usage=0.5))
    store.update_metrics("e1", EndpointMetrics(scraped_at=99.5, waiting=2, running=6, kv_usage=0.1))
    store.update_metrics("e2", EndpointMetrics(scraped_at=90.0, waiting=100, running=100, kv_usage=1.0))  # stale
    t = Telemetry(store, pool_name="p")
    get = t.registry.get_sample_value
    assert get("inference_pool_ready_pods", {"name": "p"}) == 3
    assert get("inference_pool_average_queue_size", {"name": "p"}) == 3
    assert get("inference_pool_average_running_requests", {"name": "p"}) == 4
    assert abs(get("inference_pool_average_kv_cache_utilization", {"name": "p"}) - 0.3) < 1e-9
    assert get("inference_pool_per_pod_queue_size", {"name": "p", "model_server_pod": "e0"}) == 4
    assert get("inference_pool_per_pod_queue_size", {"name": "p", "model_server_pod": "e2"}) is None


def test_registries_are_independent() -> None:
    a, b = Telemetry(), Telemetry()
    a.request_rejected("m", "m", RequestError(400, "bad"))
    labels = {"model_name": "m", "target_model_name": "m", "error_code": "BadRequest"}
    assert a.registry.get_sample_value("inference_objective_request_error_total", labels) == 1
    assert b.registry.get_sample_value("inference_objective_request_error_total", labels) is None


def test_error_codes() -> None:
    assert [error_code(s) for s in (400, 413, 429, 503, 500, 418)] == [
        "BadRequest", "BadRequest", "InferencePoolResourceExhausted", "ServiceUnavailable", "Internal", "Internal",
    ]


async def test_metrics_http_endpoint() -> None:
    t = Telemetry(Datastore(), pool_name="p", build_ref="v1")
    server = MetricsServer(t, 0, host="127.0.0.1")
    await server.start()
    try:
        url = f"http://127.0.0.1:{server.port}/metrics"
        text = await asyncio.to_thread(lambda: urllib.request.urlopen(url, timeout=10).read().decode())
    finally:
        await server.stop()
    assert 'inference_extension_info{build_ref="v1",commit=""} 1.0' in text
    assert 'inference_pool_ready_pods{name="p"} 0.0' in text
    assert "# TYPE inference_extension_scheduler_e2e_duration_seconds histogram" in text


def test_client_chosen_model_names_are_bounded_label_values() -> None:
    """Random model names from clients must not create time series without end (each is kept forever)."""
    t = Telemetry(max_model_labels=3)
    for i in range(50):
        t.request_rejected(f"m{i}", f"m{i}", RequestError(400, "bad"))
    t.request_rejected("x" * 10_000, "", RequestError(400, "bad"))
    get = t.registry.get_sample_value
    values = {s.labels["model_name"] for m in t.registry.collect() for s in m.samples
              if m.name == "inference_objective_request_error"}
    assert values == {"m0", "m1", "m2", "__other__"}
    assert get("inference_objective_request_error_total",
               {"model_name": "__other__", "target_model_name": "__other__", "error_code": "BadRequest"}) == 48
    assert get("epp_model_label_values") == 3 and get("epp_model_label_values_limit") == 3
