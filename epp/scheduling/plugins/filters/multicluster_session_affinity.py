"""``multicluster-session-affinity-filter`` (llm-d, alpha): keep a session on the cluster that served it.

The request's ``x-session-token`` (base64 ``<namespace>/<endpoint>``, as ``session-affinity-scorer``
writes it on responses) names a cluster endpoint; when that endpoint is among the candidates only it
passes, otherwise (no token, undecodable, or the cluster is gone) every candidate passes. Cluster
identity comes from discovery, so the same token works for pods and for cluster gateways.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from epp.datastore import EndpointState
from epp.request import LLMRequest
from epp.request.headers import SESSION_TOKEN_HEADER
from epp.plugin.typed_name import TypedName
from epp.scheduling.framework import CycleState
from epp.plugin.params import NoParams, decode_params
from epp.scheduling.plugins.scorers.session_affinity import endpoint_key, session_endpoint, session_token
from epp.plugin.registry import PluginHandle

MULTICLUSTER_SESSION_AFFINITY_FILTER = "multicluster-session-affinity-filter"


class MultiClusterSessionAffinityFilter:
    def __init__(self, name: str = MULTICLUSTER_SESSION_AFFINITY_FILTER) -> None:
        self.typed_name = TypedName(MULTICLUSTER_SESSION_AFFINITY_FILTER, name)

    def filter(self, cycle: CycleState, request: LLMRequest, endpoints: list[EndpointState]) -> list[EndpointState]:
        wanted = session_endpoint(request)
        if wanted is None:
            return endpoints
        kept = [e for e in endpoints if endpoint_key(e) == wanted]
        return kept or endpoints

    def response_headers(self, request: LLMRequest, endpoint: EndpointState) -> dict[str, str]:
        return {SESSION_TOKEN_HEADER: session_token(endpoint)}


def factory(name: str, params: Mapping[str, Any], handle: PluginHandle) -> MultiClusterSessionAffinityFilter:
    decode_params(NoParams, params)
    return MultiClusterSessionAffinityFilter(name)
