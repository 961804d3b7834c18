"""``topology-extractor`` (llm-d ``datalayer/extractor/topology``) and the peer-topology rules its
consumers share (llm-d ``scheduling/util/topology``).

The extractor gives each endpoint a ``Topology`` (host, rack, zone, region) read from pod labels named by
its parameters (``hostname`` → ``kubernetes.io/hostname``, ``rack`` → ``topology.kubernetes.io/rack``,
``zone`` → ``topology.kubernetes.io/zone``, ``region`` → ``topology.kubernetes.io/region``). Upstream
falls back to the pod's ``spec.hostname`` when the hostname label is absent; epp's discovery keeps only
labels, so that fallback is not available (said once at start).

The peer is the endpoint a request's other phase was sent to: a disaggregation profile handler puts it
in the cycle state under ``PEER_ENDPOINT``; in coordinator deployments its encoded topology comes in
the ``peerTopologyHeader`` instead (``host=…,rack=…,zone=…,region=…``, unknown keys ignored).
``level`` compares two topologies: the tightest level at which both name the same non-empty place.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from epp.datastore import EndpointState
from epp.request import LLMRequest
from epp.plugin.typed_name import TypedName
from epp.scheduling.framework import CycleState
from epp.plugin.params import ParamError, decode_params
from epp.plugin.registry import PluginHandle

log = logging.getLogger(__name__)

TOPOLOGY_EXTRACTOR = "topology-extractor"
PEER_ENDPOINT = "peer-endpoint"
"""Cycle-state key under which a disaggregation handler puts the peer phase's ``EndpointState``."""


class Level(enum.IntEnum):
    HOST = 0
    RACK = 1
    ZONE = 2
    REGION = 3
    NONE = 4


@dataclass(frozen=True, slots=True)
class Topology:
    host: str = ""
    rack: str = ""
    zone: str = ""
    region: str = ""

    @property
    def empty(self) -> bool:
        return not (self.host or self.rack or self.zone or self.region)


def level(peer: Topology, candidate: Topology) -> Level:
    for lvl, a, b in ((Level.HOST, peer.host, candidate.host), (Level.RACK, peer.rack, candidate.rack),
                      (Level.ZONE, peer.zone, candidate.zone), (Level.REGION, peer.region, candidate.region)):
        if a and a == b:
            return lvl
    return Level.NONE


def parse_level(text: str, key: str) -> Level:
    try:
        return Level[text.upper()]
    except KeyError:
        raise ParamError(key, "must be host, rack, zone or region") from None


def decode(header: str) -> Topology:
    fields: dict[str, str] = {}
    for pair in header.split(","):
        key, sep, value = pair.partition("=")
        if sep and key in ("host", "rack", "zone", "region"):
            fields[key] = value
    return Topology(**fields)


@dataclass(frozen=True, slots=True)
class TopologyLabels:
    hostname: str = "kubernetes.io/hostname"
    rack: str = "topology.kubernetes.io/rack"
    zone: str = "topology.kubernetes.io/zone"
    region: str = "topology.kubernetes.io/region"


class TopologyExtractor:
    def __init__(self, name: str = TOPOLOGY_EXTRACTOR, labels: TopologyLabels | None = None) -> None:
        self.typed_name = TypedName(TOPOLOGY_EXTRACTOR, name)
        self.labels = labels or TopologyLabels()

    def topology(self, state: EndpointState) -> Topology | None:
        """The endpoint's topology, None when none of its labels is set (as upstream stores nothing)."""
        got = state.endpoint.labels
        lab = self.labels
        topo = Topology(got.get(lab.hostname, ""), got.get(lab.rack, ""), got.get(lab.zone, ""), got.get(lab.region, ""))
        return None if topo.empty else topo

    def peer(self, cycle: CycleState, request: LLMRequest, header: str | None) -> Topology | None:
        """The peer's topology from the cycle's peer endpoint, else from ``header``; None if unknown or empty."""
        peer_state = cycle.get(PEER_ENDPOINT)
        if isinstance(peer_state, EndpointState) and (topo := self.topology(peer_state)) is not None:
            return topo
        if header:
            value = request.headers.get(header)
            if value and not (topo := decode(value)).empty:
                return topo
        return None


def find_extractor(handle: PluginHandle, wanted: str | None) -> TopologyExtractor:
    """The named extractor (ParamError if absent), else the configured one, else one with default labels
    (upstream defaults to the extractor's default producer the same way)."""
    if wanted is not None:
        found = handle.plugins.get(wanted)
        if not isinstance(found, TopologyExtractor):
            raise ParamError("topologyProducerName", f"no {TOPOLOGY_EXTRACTOR} plugin named {wanted!r}")
        return found
    found = handle.by_type(TOPOLOGY_EXTRACTOR)
    return found if isinstance(found, TopologyExtractor) else TopologyExtractor()


def extractor_factory(name: str, params: Mapping[str, Any], handle: PluginHandle) -> TopologyExtractor:
    labels = decode_params(TopologyLabels, params)
    log.info("%s: reads host/rack/zone/region from pod labels %s, %s, %s, %s; the spec.hostname fallback "
             "needs pod watches epp's discovery does not keep", name, labels.hostname, labels.rack, labels.zone, labels.region)
    return TopologyExtractor(name, labels)
