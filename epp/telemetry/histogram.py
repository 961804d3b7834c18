"""Histograms for hot paths: bucket counts kept in plain lists, turned into Prometheus families at scrape.

prometheus_client's ``Histogram.observe`` takes a lock and walks per-bucket value objects (~0.75 µs);
a pick observes a dozen plugin timings, so that alone would add several percent to it. Here an
observation is one ``bisect`` and two list updates (~0.15 µs). epp updates metrics from its event-loop
thread only, so no lock is needed; a scrape runs on the same loop and sees consistent counts.

One ``FastHistogram`` can be exposed under several names (``HistogramView``), each with its own label
projection: GIE's unlabelled family and llm-d's per-plugin twin come from the same counts.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Iterator, Sequence

from prometheus_client.core import HistogramMetricFamily
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

Labels = tuple[str, ...]


class FastHistogram:
    """Per label set: ``counts[i]`` observations with ``value <= bounds[i]`` (first such bound; the last
    slot is +Inf), then the running sum. Values may be in any unit; views scale them for exposition."""

    def __init__(self, bounds: Sequence[float]) -> None:
        if list(bounds) != sorted(set(bounds)):
            raise ValueError("histogram bounds must be strictly increasing")
        self.bounds = tuple(bounds)
        self.series: dict[Labels, list[float]] = {}

    def counts_for(self, labels: Labels) -> list[float]:
        """The mutable counts of one label set (created at first use); callers on a hot path keep it."""
        counts = self.series.get(labels)
        if counts is None:
            counts = self.series[labels] = [0] * (len(self.bounds) + 2)
        return counts

    def observe(self, labels: Labels, value: float) -> None:
        counts = self.counts_for(labels)
        counts[bisect_left(self.bounds, value)] += 1
        counts[-1] += value

    def recorder(self, labels: Labels) -> Callable[[float], None]:
        """``observe`` for one label set, its counts resolved now: for hot paths that keep the recorder."""
        counts, bounds = self.counts_for(labels), self.bounds

        def record(value: float) -> None:
            counts[bisect_left(bounds, value)] += 1
            counts[-1] += value

        return record


class HistogramView(Collector):
    """``source`` exposed as the histogram family ``name``: label sets are mapped through ``project``
    (which may merge several into one) and values multiplied by ``scale`` (e.g. 1e-9 for ns → s)."""

    def __init__(
        self, name: str, documentation: str, label_names: Sequence[str], source: FastHistogram,
        project: Callable[[Labels], Labels] = lambda labels: labels, scale: float = 1.0,
    ) -> None:
        self.name = name
        self.documentation = documentation
        self.label_names = tuple(label_names)
        self.source = source
        self.project = project
        self.scale = scale
        # prometheus_client's own `le` formatting, so the twin's buckets read as the library's; it is unannotated
        self._les = [floatToGoString(b * scale) for b in source.bounds] + ["+Inf"]  # type: ignore[no-untyped-call]

    def describe(self) -> Iterator[HistogramMetricFamily]:
        yield HistogramMetricFamily(self.name, self.documentation, labels=self.label_names)

    def collect(self) -> Iterator[HistogramMetricFamily]:
        merged: dict[Labels, list[float]] = {}
        for labels, counts in self.source.series.items():
            key = self.project(labels)
            into = merged.get(key)
            if into is None:
                merged[key] = list(counts)
            else:
                for i, c in enumerate(counts):
                    into[i] += c
        family = HistogramMetricFamily(self.name, self.documentation, labels=self.label_names)
        for labels, counts in merged.items():
            cumulative, buckets = 0.0, []
            for le, c in zip(self._les, counts):
                cumulative += c
                buckets.append((le, cumulative))
            family.add_metric(list(labels), buckets, sum_value=counts[-1] * self.scale)
        yield family
