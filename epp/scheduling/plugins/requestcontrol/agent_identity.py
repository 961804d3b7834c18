"""``agent-identity`` (llm-d ``requestcontrol/requestheader/agentidentity``): one fairness flow per agent
session.

Before admission it looks for the session header of known coding agents — the operator's
``additionalSessionHeaders`` first, in order, then ``x-claude-code-session-id`` (Claude Code),
``x-session-affinity`` (OpenCode), ``session-id`` and ``session_id`` (Codex) — and the first non-empty
value becomes the request's agent identity. The request's fairness id is derived from it unless the
client sent an explicit fairness header, which always wins; no match leaves the default flow.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from epp.request import LLMRequest
from epp.request.headers import FAIRNESS_HEADERS
from epp.plugin.typed_name import TypedName
from epp.plugin.params import decode_params
from epp.plugin.registry import PluginHandle

AGENT_IDENTITY = "agent-identity"
DEFAULT_SESSION_HEADERS = ("x-claude-code-session-id", "x-session-affinity", "session-id", "session_id")


@dataclass(frozen=True, slots=True)
class AgentIdentityParams:
    additional_session_headers: list[str] = field(default_factory=list)


class AgentIdentity:
    def __init__(self, name: str = AGENT_IDENTITY, params: AgentIdentityParams | None = None) -> None:
        self.typed_name = TypedName(AGENT_IDENTITY, name)
        extra = (params or AgentIdentityParams()).additional_session_headers
        self.headers = tuple(h.lower() for h in extra) + DEFAULT_SESSION_HEADERS

    def identity(self, request: LLMRequest) -> str | None:
        for header in self.headers:
            value = request.headers.get(header)
            if value:
                return value
        return None

    def process_request(self, request: LLMRequest) -> None:
        identity = self.identity(request)
        if identity is not None and not any(request.headers.get(h) for h in FAIRNESS_HEADERS):
            request.fairness_id = identity


def factory(name: str, params: Mapping[str, Any], handle: PluginHandle) -> AgentIdentity:
    return AgentIdentity(name, decode_params(AgentIdentityParams, params))
