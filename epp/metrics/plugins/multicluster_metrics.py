"""``multicluster-metrics-data-source`` and ``multicluster-metrics-extractor`` (llm-d, alpha): a hub
picker's view of whole clusters. Each endpoint of a multicluster pool is a remote cluster's gateway
(``multicluster-file-discovery``); the source scrapes the remote picker's ``/metrics`` (``scheme``,
``path``, ``port``, ``caCertPath`` …) and the extractor stores that pool's aggregates as
``multicluster.kv_cache_utilization`` and ``multicluster.queue_size`` for the multicluster scorers.

Metric names default to ``llm_d_epp_average_kv_cache_utilization`` and ``llm_d_epp_average_queue_size``
(``kvCacheUtilizationMetric``, ``queueSizeMetric``; ``name{label="value",…}`` selects a series). A
missing metric is reported but the other is still stored. Running a hub needs a second cluster to
route to; nothing here needs one to load, and the single-cluster case simply has one endpoint.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from epp.contracts.attributes import KV_CACHE_ATTRIBUTE, QUEUE_SIZE_ATTRIBUTE
from epp.datastore import Endpoint
from epp.metrics.extract import family_sample
from epp.plugin.typed_name import TypedName
from epp.plugin.params import ParamError, decode_params
from epp.metrics.http_source import HttpSourceParams, SourcePlugin
from epp.plugin.registry import PluginHandle

MULTICLUSTER_METRICS_DATA_SOURCE = "multicluster-metrics-data-source"
MULTICLUSTER_METRICS_EXTRACTOR = "multicluster-metrics-extractor"
_SPEC = re.compile(r'^([A-Za-z_:][A-Za-z0-9_:]*)(?:\{(.*)\})?$')
_LABEL = re.compile(r'\s*([A-Za-z_][A-Za-z0-9_]*)\s*=\s*"([^"]*)"\s*')


@dataclass(frozen=True, slots=True)
class MetricSpec:
    name: str
    labels: tuple[tuple[str, str], ...] = ()


def parse_spec(text: str, key: str) -> MetricSpec:
    m = _SPEC.match(text.strip())
    if m is None:
        raise ParamError(key, f"not a metric name or name{{label=\"value\"}}: {text!r}")
    labels = []
    for part in filter(None, (m.group(2) or "").split(",")):
        lm = _LABEL.fullmatch(part)
        if lm is None:
            raise ParamError(key, f"bad label matcher {part!r}")
        labels.append((lm.group(1), lm.group(2)))
    return MetricSpec(m.group(1), tuple(labels))


@dataclass(frozen=True, slots=True)
class MultiClusterExtractorParams:
    kv_cache_utilization_metric: str = "llm_d_epp_average_kv_cache_utilization"
    queue_size_metric: str = "llm_d_epp_average_queue_size"


class MultiClusterMetricsExtractor:
    def __init__(self, name: str = MULTICLUSTER_METRICS_EXTRACTOR, params: MultiClusterExtractorParams | None = None) -> None:
        self.typed_name = TypedName(MULTICLUSTER_METRICS_EXTRACTOR, name)
        p = params or MultiClusterExtractorParams()
        self.specs = ((KV_CACHE_ATTRIBUTE, parse_spec(p.kv_cache_utilization_metric, "kvCacheUtilizationMetric")),
                      (QUEUE_SIZE_ATTRIBUTE, parse_spec(p.queue_size_metric, "queueSizeMetric")))

    def extract(self, endpoint: Endpoint, body: str) -> Mapping[str, Any]:
        latest: dict[str, float] = {}
        for line in body.splitlines():
            for attribute, spec in self.specs:
                sample = family_sample(line, spec.name)
                if sample is not None and all(sample.labels.get(k) == v for k, v in spec.labels):
                    latest[attribute] = float(sample.value)
        if not latest:
            raise ValueError(f"none of {', '.join(s.name for _, s in self.specs)} in the cluster's metrics")
        return latest


def source_factory(name: str, params: Mapping[str, Any], handle: PluginHandle) -> SourcePlugin:
    return SourcePlugin(TypedName(MULTICLUSTER_METRICS_DATA_SOURCE, name), decode_params(HttpSourceParams, params),
                        MULTICLUSTER_METRICS_EXTRACTOR)


def extractor_factory(name: str, params: Mapping[str, Any], handle: PluginHandle) -> MultiClusterMetricsExtractor:
    return MultiClusterMetricsExtractor(name, decode_params(MultiClusterExtractorParams, params))
