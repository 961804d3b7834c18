"""``session-affinity-scorer`` (llm-d): keep a session on the endpoint that served it before.

Score = 1 for the endpoint named by the request's ``x-session-token`` header (base64 of
``<namespace>/<endpoint name>``), 0 for the others; no or undecodable token → 0 for all. After the
response starts, the plugin asks for the same header to be set on the response naming the endpoint
that served it, so a client that echoes it back stays put. Not metric-based: staleness does not apply
(a stale endpoint keeps its session; filters decide whether it may serve).
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping
from typing import Any

from epp.datastore import EndpointState
from epp.request import LLMRequest
from epp.request.headers import SESSION_TOKEN_HEADER
from epp.plugin.typed_name import TypedName
from epp.scheduling.framework import CycleState
from epp.plugin.params import NoParams, decode_params
from epp.plugin.registry import PluginHandle

SESSION_AFFINITY_SCORER = "session-affinity-scorer"


def session_token(state: EndpointState) -> str:
    """The token that names ``state``'s endpoint."""
    return base64.b64encode(endpoint_key(state).encode()).decode()


def _decode(token: str) -> str | None:
    try:
        return base64.b64decode(token, validate=True).decode()
    except (binascii.Error, UnicodeDecodeError):
        return None


def session_endpoint(request: LLMRequest) -> str | None:
    """The ``<namespace>/<endpoint name>`` the request's session token names, None without a valid one."""
    token = request.session_token or request.headers.get(SESSION_TOKEN_HEADER)
    return _decode(token) if token else None


def endpoint_key(state: EndpointState) -> str:
    return f"{state.endpoint.namespace}/{state.name}"


class SessionAffinityScorer:
    def __init__(self, name: str = SESSION_AFFINITY_SCORER) -> None:
        self.typed_name = TypedName(SESSION_AFFINITY_SCORER, name)

    def score(self, cycle: CycleState, request: LLMRequest, endpoints: list[EndpointState]) -> list[float]:
        wanted = session_endpoint(request)
        if wanted is None:
            return [0.0] * len(endpoints)
        return [1.0 if endpoint_key(e) == wanted else 0.0 for e in endpoints]

    def response_headers(self, request: LLMRequest, endpoint: EndpointState) -> dict[str, str]:
        return {SESSION_TOKEN_HEADER: session_token(endpoint)}


def factory(name: str, params: Mapping[str, Any], handle: PluginHandle) -> SessionAffinityScorer:
    decode_params(NoParams, params)
    return SessionAffinityScorer(name)
