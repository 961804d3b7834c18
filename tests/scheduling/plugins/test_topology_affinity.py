"""topology-extractor, topology-affinity-filter and -scorer: co-location with the peer endpoint, from
the cycle's peer or the coordinator's header, failing open."""

from __future__ import annotations

import pytest

from epp.config import ConfigError, load_scheduler_text
from epp.datastore import EndpointState
from epp.scheduling.framework import CycleState
from epp.scheduling.plugins.datalayer.topology import PEER_ENDPOINT, Level, Topology, decode, level
from epp.scheduling.plugins.filters.topology_affinity import TopologyAffinityFilter
from epp.scheduling.plugins.scorers.topology_affinity import TopologyAffinityScorer
from tests.conftest import make_request, make_state

HOST, RACK, ZONE, REGION = ("kubernetes.io/hostname", "topology.kubernetes.io/rack",
                            "topology.kubernetes.io/zone", "topology.kubernetes.io/region")


def node(name: str, host: str = "", rack: str = "", zone: str = "", region: str = "") -> EndpointState:
    labels = {k: v for k, v in ((HOST, host), (RACK, rack), (ZONE, zone), (REGION, region)) if v}
    return make_state(name, labels=labels)


def build(text: str) -> tuple[TopologyAffinityFilter, TopologyAffinityScorer]:
    head = "apiVersion: llm-d.ai/v1alpha1\nkind: EndpointPickerConfig\nplugins:\n"
    plugins = load_scheduler_text(head + text).plugins
    return (next(p for p in plugins if isinstance(p, TopologyAffinityFilter)),
            next(p for p in plugins if isinstance(p, TopologyAffinityScorer)))


CANDIDATES = [node("same-host", "h1", "r1", "z1", "g1"), node("same-rack", "h2", "r1", "z1", "g1"),
              node("same-zone", "h3", "r2", "z1", "g1"), node("same-region", "h4", "r3", "z2", "g1"),
              node("far", "h5", "r4", "z3", "g2"), node("unlabelled")]


def names(endpoints: list[EndpointState]) -> list[str]:
    return [e.name for e in endpoints]


def test_levels_and_header_codec() -> None:
    assert level(Topology("h", "r", "z", "g"), Topology("x", "r", "z", "g")) is Level.RACK
    assert level(Topology(zone=""), Topology(zone="")) is Level.NONE  # empty never matches
    assert decode("host=h1,zone=z1,bogus=1,broken") == Topology(host="h1", zone="z1")


def test_filter_keeps_candidates_at_min_affinity_or_tighter_and_fails_open() -> None:
    f, _ = build("- {type: topology-extractor}\n- {type: topology-affinity-scorer}\n"
                 "- {type: topology-affinity-filter, parameters: {minAffinity: zone}}\n")
    cycle = CycleState({PEER_ENDPOINT: node("peer", "h1", "r1", "z1", "g1")})
    assert names(f.filter(cycle, make_request(), CANDIDATES)) == ["same-host", "same-rack", "same-zone"]
    assert f.filter(CycleState(), make_request(), CANDIDATES) == CANDIDATES  # no peer
    lonely = CycleState({PEER_ENDPOINT: node("peer", "h9", "r9", "z9", "g9")})
    assert f.filter(lonely, make_request(), CANDIDATES) == CANDIDATES  # nobody qualifies


def test_scorer_curve_and_peer_header() -> None:
    f, s = build("- type: topology-affinity-filter\n- type: topology-affinity-scorer\n"
                 "  parameters: {peerTopologyHeader: X-Peer-Topology}\n")
    req = make_request(headers={"x-peer-topology": "host=h1,rack=r1,zone=z1,region=g1"})
    assert s.score(CycleState(), req, CANDIDATES) == pytest.approx([1.0, 0.2, 0.05, 0.02, 0.0, 0.0])
    assert s.score(CycleState(), make_request(), CANDIDATES) == [0.0] * 6
    assert names(f.filter(CycleState(), req, CANDIDATES)) == names(CANDIDATES)  # filter has no header configured


def test_extractor_label_names_and_bad_parameters() -> None:
    f, s = build("- {type: topology-extractor, name: topo, parameters: {zone: example.com/zone}}\n"
                 "- {type: topology-affinity-scorer, parameters: {topologyProducerName: topo}}\n"
                 "- {type: topology-affinity-filter, parameters: {topologyProducerName: topo, minAffinity: zone}}\n")
    a, b = make_state("a", labels={"example.com/zone": "z1"}), make_state("b", labels={"example.com/zone": "z2"})
    cycle = CycleState({PEER_ENDPOINT: make_state("p", labels={"example.com/zone": "z1"})})
    assert s.score(cycle, make_request(), [a, b]) == [0.05, 0.0]
    assert names(f.filter(cycle, make_request(), [a, b])) == ["a"]
    with pytest.raises(ConfigError, match="minAffinity"):
        build("- {type: topology-affinity-filter, parameters: {minAffinity: galaxy}}\n- {type: topology-affinity-scorer}\n")
    with pytest.raises(ConfigError, match="topologyProducerName"):
        build("- {type: topology-affinity-filter, parameters: {topologyProducerName: nope}}\n- {type: topology-affinity-scorer}\n")
