"""``dcgm-data-source`` and ``dcgm-extractor`` (llm-d ``datalayer/source/dcgm``, ``extractor/dcgm``):
GPU utilization from NVIDIA's DCGM exporter.

The source fetches ``http://<endpoint address>:9400/metrics`` (``scheme``, ``path``, ``port``,
``insecureSkipVerify`` default true, ``interval``). ``useNodeAddress`` asks for the node's address
instead of the pod's (a DaemonSet exporter): epp's discovery does not record node addresses, so it says
so once at start and scrapes the pod address — right for a sidecar exporter.

The extractor reads ``DCGM_FI_DEV_GPU_UTIL`` (0–100), keeps the samples of this endpoint's pod (all of
them when a sample has no ``pod`` label), takes the max over GPUs and stores it / 100 as the
``GPUUtilization`` attribute, which ``endpoint-attribute-{filter,scorer}`` read. A page without the
family, or without a sample for the pod, is an error for that scrape (the last value ages out with
nothing new written, and the poller logs it once).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from epp.datastore import Endpoint
from epp.metrics.extract import family_sample
from epp.plugin.typed_name import TypedName
from epp.plugin.params import NoParams, decode_params
from epp.metrics.http_source import HttpSourceParams, SourcePlugin, pod_name
from epp.plugin.registry import PluginHandle

log = logging.getLogger(__name__)

DCGM_DATA_SOURCE = "dcgm-data-source"
DCGM_EXTRACTOR = "dcgm-extractor"
GPU_UTIL_METRIC = "DCGM_FI_DEV_GPU_UTIL"
GPU_UTILIZATION = "GPUUtilization"
DEFAULT_PORT = 9400


class DcgmExtractor:
    def __init__(self, name: str = DCGM_EXTRACTOR) -> None:
        self.typed_name = TypedName(DCGM_EXTRACTOR, name)

    def extract(self, endpoint: Endpoint, body: str) -> Mapping[str, Any]:
        pod = pod_name(endpoint)
        best: float | None = None
        family_seen = False
        for line in body.splitlines():
            sample = family_sample(line, GPU_UTIL_METRIC)
            if sample is None:
                continue
            family_seen = True
            owner = sample.labels.get("pod")
            if owner is not None and owner != pod:
                continue
            value = float(sample.value)
            best = value if best is None else max(best, value)
        if not family_seen:
            raise ValueError(f"metric {GPU_UTIL_METRIC} not found in the DCGM response")
        if best is None:
            raise ValueError(f"metric {GPU_UTIL_METRIC} has no sample for pod {pod!r}")
        return {GPU_UTILIZATION: best / 100.0}


def source_factory(name: str, params: Mapping[str, Any], handle: PluginHandle) -> SourcePlugin:
    p = decode_params(HttpSourceParams, {"port": DEFAULT_PORT, **params})
    if p.use_node_address:
        log.warning("%s: useNodeAddress: epp's discovery records no node address; scraping DCGM on the pod's "
                    "address (a sidecar exporter's)", name)
    return SourcePlugin(TypedName(DCGM_DATA_SOURCE, name), p, DCGM_EXTRACTOR)


def extractor_factory(name: str, params: Mapping[str, Any], handle: PluginHandle) -> DcgmExtractor:
    decode_params(NoParams, params)
    return DcgmExtractor(name)
