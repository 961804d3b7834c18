"""``plugin_duration_seconds``: how long each plugin takes at each extension point.

The scheduler reports every plugin call (``Scheduler.instrument``) to a recorder resolved per
(extension point, plugin) at instrumentation; counts are kept in a
``FastHistogram`` in nanoseconds and exposed in seconds under GIE's name and llm-d's twin, with GIE's
buckets (0.1 ms … 100 ms) and labels ``extension_point``, ``plugin_type``, ``plugin_name``. The
reference times every call unconditionally, and so does epp: ``bench/schedule.py`` puts the cost at
a few percent of a pick (bench/RESULTS.md).
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry

from epp.plugin.typed_name import Plugin
from epp.scheduling.framework import DurationRecorder
from epp.telemetry.histogram import FastHistogram, HistogramView

PLUGIN_BUCKETS_S = (0.0001, 0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1)
LABELS = ("extension_point", "plugin_type", "plugin_name")
DOC = "Plugin processing latency distribution in seconds for each extension point, plugin type and plugin name."


class PluginTimings:
    """The scheduler's ``PluginTimer``: one recorder per (extension point, plugin)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.histogram = FastHistogram([round(b * 1e9) for b in PLUGIN_BUCKETS_S])
        for name in ("inference_extension_plugin_duration_seconds", "llm_d_epp_plugin_duration_seconds"):
            registry.register(HistogramView(name, DOC, LABELS, self.histogram, scale=1e-9))

    def recorder(self, extension_point: str, plugin: Plugin) -> DurationRecorder:
        tn = plugin.typed_name
        return self.histogram.recorder((extension_point, tn.type, tn.name))
