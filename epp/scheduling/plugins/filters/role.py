"""Disaggregation role filters (llm-d): ``prefill-filter``, ``decode-filter``, ``encode-filter``.

Each keeps endpoints whose ``llm-d.ai/role`` label is one of its roles: prefill → ``prefill``;
decode → ``decode`` or ``both``, and unlabelled endpoints (which are ``both``), so a plain aggregated
pool passes a decode filter; encode → ``encode``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from epp.datastore import EndpointState
from epp.request import LLMRequest
from epp.plugin.typed_name import TypedName
from epp.scheduling.framework import CycleState
from epp.plugin.params import NoParams, decode_params
from epp.plugin.registry import PluginHandle

PREFILL_FILTER = "prefill-filter"
DECODE_FILTER = "decode-filter"
ENCODE_FILTER = "encode-filter"

ROLES: dict[str, frozenset[str]] = {
    PREFILL_FILTER: frozenset({"prefill"}),
    DECODE_FILTER: frozenset({"decode", "both"}),
    ENCODE_FILTER: frozenset({"encode"}),
}


class RoleFilter:
    def __init__(self, plugin_type: str, name: str | None = None) -> None:
        self.typed_name = TypedName(plugin_type, name or plugin_type)
        self.roles = ROLES[plugin_type]

    def filter(self, cycle: CycleState, request: LLMRequest, endpoints: list[EndpointState]) -> list[EndpointState]:
        roles = self.roles
        return [e for e in endpoints if e.endpoint.role in roles]


def factory_for(plugin_type: str) -> Callable[[str, Mapping[str, Any], PluginHandle], RoleFilter]:
    def factory(name: str, params: Mapping[str, Any], handle: PluginHandle) -> RoleFilter:
        decode_params(NoParams, params)
        return RoleFilter(plugin_type, name)

    return factory
