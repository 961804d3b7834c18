"""multicluster-* (alpha): the documented hub config loads and builds; the extractor reads a remote
picker's pool gauges; the scorers rank clusters by them; the session filter pins a session's cluster;
cluster gateways come from the endpoints file through multicluster-file-discovery."""

from __future__ import annotations

from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from epp.config import build_scheduler, parse_config_text
from epp.datastore import Datastore, Endpoint, EndpointState
from epp.discovery.sources import select_source
from epp.metrics.sources import attribute_pollers
from epp.scheduling.framework import CycleState
from epp.metrics.plugins.multicluster_metrics import MultiClusterMetricsExtractor, MultiClusterExtractorParams
from epp.scheduling.plugins.filters.multicluster_session_affinity import MultiClusterSessionAffinityFilter
from epp.scheduling.plugins.scorers.multicluster_kv_cache import MultiClusterKVCacheScorer
from epp.scheduling.plugins.scorers.multicluster_queue import MultiClusterQueueScorer
from epp.scheduling.plugins.scorers.session_affinity import session_token
from tests.conftest import make_request, make_state
from tests.discovery.test_sources import flags

HUB = """apiVersion: llm-d.ai/v1alpha1
kind: EndpointPickerConfig
plugins:
  - {type: multicluster-file-discovery, name: discovery, parameters: {path: PATH}}
  - {type: multicluster-metrics-data-source, name: metrics-source, parameters: {scheme: https, caCertPath: /etc/epp/tls/ca.crt}}
  - {type: multicluster-metrics-extractor, name: metrics-extractor}
  - {type: multicluster-session-affinity-filter, name: session-affinity}
  - {type: multicluster-kv-cache-utilization-scorer, name: kv-cache}
  - {type: multicluster-queue-scorer, name: queue}
  - {type: max-score-picker}
  - {type: single-profile-handler}
dataLayer:
  discovery: {pluginRef: discovery}
  sources:
    - pluginRef: metrics-source
      extractors: [{pluginRef: metrics-extractor}]
"""
REMOTE_METRICS = """# TYPE llm_d_epp_average_kv_cache_utilization gauge
llm_d_epp_average_kv_cache_utilization{name="pool-a"} 0.25
# TYPE llm_d_epp_average_queue_size gauge
llm_d_epp_average_queue_size{name="pool-a"} 7
"""


def clusters(*values: tuple[float | None, float | None]) -> list[EndpointState]:
    eps = [make_state(f"cluster-{i}", address=f"10.1.0.{i + 1}") for i in range(len(values))]
    for e, (kv, queue) in zip(eps, values):
        if kv is not None:
            e.attributes["multicluster.kv_cache_utilization"] = kv
        if queue is not None:
            e.attributes["multicluster.queue_size"] = queue
    return eps


def test_extractor_reads_pool_gauges_and_label_selected_series() -> None:
    endpoint = Endpoint("cluster-a", "10.1.0.1", 80)
    got = MultiClusterMetricsExtractor().extract(endpoint, REMOTE_METRICS)
    assert got == {"multicluster.kv_cache_utilization": 0.25, "multicluster.queue_size": 7.0}
    picky = MultiClusterMetricsExtractor(params=MultiClusterExtractorParams(queue_size_metric='llm_d_epp_average_queue_size{name="pool-b"}'))
    assert picky.extract(endpoint, REMOTE_METRICS) == {"multicluster.kv_cache_utilization": 0.25}
    with pytest.raises(ValueError, match="none of"):
        MultiClusterMetricsExtractor().extract(endpoint, "vllm:num_requests_waiting 3\n")


def test_cluster_scorers() -> None:
    eps = clusters((0.2, 10.0), (0.9, 2.0), (None, None))
    assert MultiClusterQueueScorer().score(CycleState(), make_request(), eps) == [0.0, 1.0, 0.0]
    assert MultiClusterKVCacheScorer().score(CycleState(), make_request(), eps) == pytest.approx([0.8, 0.1, 0.0])
    same = clusters((None, 3.0), (None, 3.0))
    assert MultiClusterQueueScorer().score(CycleState(), make_request(), same) == [1.0, 1.0]


def test_session_filter_pins_the_session_cluster_and_fails_open() -> None:
    eps = clusters((None, None), (None, None))
    f = MultiClusterSessionAffinityFilter()
    pinned = make_request(headers={"x-session-token": session_token(eps[1])})
    assert f.filter(CycleState(), pinned, eps) == [eps[1]]
    assert f.filter(CycleState(), make_request(), eps) == eps
    assert f.filter(CycleState(), make_request(headers={"x-session-token": "%%%"}), eps) == eps
    gone = make_request(headers={"x-session-token": session_token(make_state("cluster-9"))})
    assert f.filter(CycleState(), gone, eps) == eps
    assert f.response_headers(pinned, eps[0]) == {"x-session-token": session_token(eps[0])}


async def test_the_documented_hub_config_loads_discovers_and_polls(tmp_path: Path) -> None:
    path = tmp_path / "clusters.yaml"
    path.write_text("endpoints:\n- {name: cluster-a, address: 10.1.0.1, port: '80'}\n- {name: cluster-b, address: 10.1.0.2, port: '80'}\n")
    config = parse_config_text(HUB.replace("PATH", str(path)))
    scheduler = build_scheduler(config)
    datastore = Datastore()
    source = select_source(flags(), config, datastore, CollectorRegistry())
    async with source.running:
        assert sorted(s.name for s in datastore.endpoints()) == ["cluster-a", "cluster-b"]
    (poller,) = attribute_pollers(config.source_extractors(), scheduler.plugins, datastore, interval=0.05)
    assert poller.url(Endpoint("cluster-a", "10.1.0.1", 80)) == "https://10.1.0.1:80/metrics"
