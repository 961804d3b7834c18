"""The prefix indexer's metrics, with the reference's meaning.

GIE (``inference_extension_prefix_indexer_*``, no labels) and llm-d (``llm_d_epp_prefix_indexer_*``,
labels ``plugin_name``, ``plugin_type``) record, once per request at PreRequest: for the chosen
endpoint, ``hit_ratio`` = blocks it already held / blocks hashed from the prompt (only when at least
one block was hashed) and ``hit_bytes`` = held blocks × tokens per block × 4 (the reference's
characters-per-token estimate), always. ``size`` is the number of (block, endpoint) entries the index
holds, read when scraped (the reference samples it on a timer); GIE's unlabelled gauge sums all
producers. The precise producer reports the same series under its own plugin type, counting
engine-reported blocks plus its learned fallback.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from epp.scheduling.prefix.hashing import BYTES_PER_TOKEN
from epp.scheduling.prefix.producer import ApproxPrefixCacheProducer
from epp.telemetry.histogram import FastHistogram, HistogramView

RATIO_BUCKETS = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)
BYTES_BUCKETS = (0, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384, 32768, 65536)
LABELS = ("plugin_name", "plugin_type")
GIE, LLMD = "inference_extension_prefix_indexer", "llm_d_epp_prefix_indexer"
SIZE_DOC = "Size of the prefix indexer."
RATIO_DOC = "Ratio of prefix length matched to total prefix length in the cache lookup."
BYTES_DOC = "Length of the prefix match in number of bytes in the cache lookup."


class PrefixTelemetry(Collector):
    """Observer for every prefix producer of a scheduler (``track``) and the size gauges over them."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.ratio = FastHistogram(RATIO_BUCKETS)
        self.hit_bytes = FastHistogram(BYTES_BUCKETS)
        self.producers: list[ApproxPrefixCacheProducer] = []
        registry.register(self)
        for prefix, project in ((GIE, lambda labels: ()), (LLMD, lambda labels: labels)):
            labels = () if prefix == GIE else LABELS
            registry.register(HistogramView(f"{prefix}_hit_ratio", RATIO_DOC, labels, self.ratio, project))
            registry.register(HistogramView(f"{prefix}_hit_bytes", BYTES_DOC, labels, self.hit_bytes, project))

    def track(self, producer: ApproxPrefixCacheProducer) -> None:
        """Observe ``producer``'s matches from now on; its series' counts are resolved once, here."""
        labels = (producer.typed_name.name, producer.typed_name.type)
        ratio, hit_bytes = self.ratio.recorder(labels), self.hit_bytes.recorder(labels)

        def observe(matched_blocks: int, total_blocks: int, block_tokens: int) -> None:
            hit_bytes(matched_blocks * block_tokens * BYTES_PER_TOKEN)
            if total_blocks > 0:
                ratio(matched_blocks / total_blocks)

        producer.add_match_observer(observe)
        self.producers.append(producer)

    def describe(self) -> Iterator[GaugeMetricFamily]:
        yield GaugeMetricFamily(f"{GIE}_size", SIZE_DOC)
        yield GaugeMetricFamily(f"{LLMD}_size", SIZE_DOC, labels=LABELS)

    def collect(self) -> Iterator[GaugeMetricFamily]:
        sizes = [(p.typed_name, p.entries()) for p in self.producers]
        per_plugin = GaugeMetricFamily(f"{LLMD}_size", SIZE_DOC, labels=LABELS)
        for name, size in sizes:
            per_plugin.add_metric([name.name, name.type], size)
        if sizes:  # like the reference, absent until a prefix producer exists
            yield GaugeMetricFamily(f"{GIE}_size", SIZE_DOC, value=sum(size for _, size in sizes))
        yield per_plugin
