"""``topology-affinity-scorer`` (llm-d ``scorer/topologyaffinity``): grade candidates by how close they
sit to the request's peer endpoint, on llm-d's fixed curve shaped by KV-transfer bandwidth: same host 1.0,
rack 0.2, zone 0.05, region 0.02, nothing in common 0. Every candidate scores 0 without a peer topology,
and one without topology scores 0. Parameters as for the filter (``topologyProducerName``,
``peerTopologyHeader``).
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
from epp.scheduling.plugins.datalayer.topology import Level, TopologyExtractor, find_extractor, level
from epp.plugin.registry import PluginHandle

TOPOLOGY_AFFINITY_SCORER = "topology-affinity-scorer"
LEVEL_SCORES: Mapping[Level, float] = {Level.HOST: 1.0, Level.RACK: 0.2, Level.ZONE: 0.05, Level.REGION: 0.02, Level.NONE: 0.0}


@dataclass(frozen=True, slots=True)
class TopologyScorerParams:
    topology_producer_name: str | None = None
    peer_topology_header: str | None = None


class TopologyAffinityScorer:
    def __init__(self, name: str, params: TopologyScorerParams, extractor: TopologyExtractor) -> None:
        self.typed_name = TypedName(TOPOLOGY_AFFINITY_SCORER, name)
        self.header = params.peer_topology_header.lower() if params.peer_topology_header else None
        self.extractor = extractor

    def score(self, cycle: CycleState, request: LLMRequest, endpoints: list[EndpointState]) -> list[float]:
        peer = self.extractor.peer(cycle, request, self.header)
        if peer is None:
            return [0.0] * len(endpoints)
        topology = self.extractor.topology
        return [0.0 if (t := topology(e)) is None else LEVEL_SCORES[level(peer, t)] for e in endpoints]


def factory(name: str, params: Mapping[str, Any], handle: PluginHandle) -> TopologyAffinityScorer:
    p = decode_params(TopologyScorerParams, params)
    return TopologyAffinityScorer(name, p, find_extractor(handle, p.topology_producer_name))
