"""``topology-affinity-filter`` (llm-d ``filter/topologyaffinity``): keep candidates co-located with the
request's peer endpoint at ``minAffinity`` (host, rack, zone or region; default host) or tighter.

Fails open: without a peer topology, or when no candidate qualifies, every candidate passes — topology
is a preference and must never make a request unroutable. A candidate without topology never qualifies.
``topologyProducerName`` picks the ``topology-extractor``; ``peerTopologyHeader`` names the header that
carries the peer's topology in coordinator deployments (see ``epp.scheduling.plugins.datalayer.topology``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from epp.datastore import EndpointState
from epp.request import LLMRequest
from epp.plugin.typed_name import TypedName
from epp.scheduling.framework import CycleState
from epp.plugin.params import decode_params
from epp.scheduling.plugins.datalayer.topology import TopologyExtractor, find_extractor, level, parse_level
from epp.plugin.registry import PluginHandle

TOPOLOGY_AFFINITY_FILTER = "topology-affinity-filter"


@dataclass(frozen=True, slots=True)
class TopologyFilterParams:
    min_affinity: str = "host"
    topology_producer_name: str | None = None
    peer_topology_header: str | None = None


class TopologyAffinityFilter:
    def __init__(self, name: str, params: TopologyFilterParams, extractor: TopologyExtractor) -> None:
        self.typed_name = TypedName(TOPOLOGY_AFFINITY_FILTER, name)
        self.min_affinity = parse_level(params.min_affinity, "minAffinity")
        self.header = params.peer_topology_header.lower() if params.peer_topology_header else None
        self.extractor = extractor

    def filter(self, cycle: CycleState, request: LLMRequest, endpoints: list[EndpointState]) -> list[EndpointState]:
        peer = self.extractor.peer(cycle, request, self.header)
        if peer is None:
            return endpoints
        kept = [e for e in endpoints
                if (topo := self.extractor.topology(e)) is not None and level(peer, topo) <= self.min_affinity]
        return kept or endpoints


def factory(name: str, params: Mapping[str, Any], handle: PluginHandle) -> TopologyAffinityFilter:
    p = decode_params(TopologyFilterParams, params)
    return TopologyAffinityFilter(name, p, find_extractor(handle, p.topology_producer_name))
