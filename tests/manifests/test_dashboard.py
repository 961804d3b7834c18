"""The Grafana dashboard covers what operators ask about and only queries metrics that exist:
the picker's GIE metric names and the engines' vLLM / SGLang names."""

from __future__ import annotations

import json
import re
from typing import Any

from tests.manifests.validate import MANIFESTS

DASHBOARD = MANIFESTS / "observability" / "dashboards" / "epp.json"
KNOWN_METRICS = {
    # picker (GIE metric names)
    "inference_extension_scheduler_attempts_total",
    "inference_extension_scheduler_e2e_duration_seconds_bucket",
    "inference_extension_prefix_indexer_hit_ratio_bucket",
    "inference_extension_prefix_indexer_hit_ratio_sum",
    "inference_extension_prefix_indexer_hit_ratio_count",
    "inference_extension_flow_control_pool_saturation",
    "inference_objective_request_total",
    "inference_objective_request_error_total",
    "inference_objective_request_duration_seconds_bucket",
    "inference_objective_input_tokens_sum",
    "inference_objective_output_tokens_sum",
    "inference_pool_average_queue_size",
    "inference_pool_average_running_requests",
    "inference_pool_average_kv_cache_utilization",
    "inference_pool_ready_pods",
    "inference_pool_per_pod_queue_size",
    # engines
    "vllm:num_requests_waiting",
    "vllm:num_requests_running",
    "vllm:kv_cache_usage_perc",
    "sglang:num_queue_reqs",
    "sglang:num_running_reqs",
    "sglang:token_usage",
}
PROMQL_WORDS = {"sum", "rate", "max", "histogram_quantile"}
_METRIC = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*(?=\s*[{\[(]|\s*\)|\s*$)")


def load() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


def panels() -> list[dict[str, Any]]:
    return [p for p in load()["panels"] if p["type"] != "row"]


def metric_names(expr: str) -> set[str]:
    without_labels = re.sub(r"\{[^}]*\}|\[[^\]]*\]|\"[^\"]*\"|\bby\s*\([^)]*\)", "", expr)
    return {m for m in _METRIC.findall(without_labels) if m not in PROMQL_WORDS and not m.startswith("$")}


def test_queries_use_only_known_metric_names() -> None:
    used = {name for p in panels() for t in p["targets"] for name in metric_names(t["expr"])}
    assert used and used <= KNOWN_METRICS, used - KNOWN_METRICS


def test_metric_name_extraction() -> None:
    assert metric_names('sum by (le) (rate(foo_bucket{a="b"}[$__rate_interval]))') == {"foo_bucket"}
    assert metric_names("vllm:num_requests_waiting{namespace=\"x\"}") == {"vllm:num_requests_waiting"}
    assert metric_names("sum by (pod, port) (rate(x_total[5m]))") == {"x_total"}


def test_covers_the_operator_questions() -> None:
    titles = " | ".join(p["title"].lower() for p in panels())
    for topic in ("picks per endpoint", "prefix-cache hit ratio", "errors by code", "saturation", "queue per engine", "kv-cache usage per engine"):
        assert topic in titles, topic
    exprs = " ".join(t["expr"] for p in panels() for t in p["targets"])
    assert "vllm:" in exprs and "sglang:" in exprs


def test_every_panel_uses_the_datasource_variable_and_fits_the_grid() -> None:
    dash = load()
    assert [v["name"] for v in dash["templating"]["list"]] == ["datasource", "namespace", "pool"]
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
    for panel in panels():
        assert panel["datasource"]["uid"] == "${datasource}" and panel["targets"], panel["title"]
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24
