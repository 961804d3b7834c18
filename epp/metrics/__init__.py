"""Engine ``/metrics`` polling: scrape each endpoint, map engine-specific names, feed the datastore."""

from epp.metrics.engines import ENGINES, EngineSpec, LabelInfo, Selector, engine_kind, spec_for
from epp.metrics.extract import EngineExtractor, MetricsError
from epp.metrics.poller import MetricsPoller, ScrapeFailure

__all__ = [
    "ENGINES",
    "EngineExtractor",
    "EngineSpec",
    "LabelInfo",
    "MetricsError",
    "MetricsPoller",
    "ScrapeFailure",
    "Selector",
    "engine_kind",
    "spec_for",
]
