"""``owned-by-filter``: a request that names an engine kind goes only to endpoints of that kind.

The request's ``owned_by`` (e.g. ``vllm``, ``sglang``) is compared, case-insensitively, with each
endpoint's engine type (label ``llm-d.ai/engine-type``, default ``vllm``). A request naming no engine
keeps every endpoint, so mixed-engine pools work unchanged for clients that do not care.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from epp.datastore import EndpointState
from epp.request import LLMRequest
from epp.plugin.typed_name import TypedName
from epp.scheduling.framework import CycleState
from epp.plugin.params import NoParams, decode_params
from epp.plugin.registry import PluginHandle

OWNED_BY_FILTER = "owned-by-filter"


class OwnedByFilter:
    def __init__(self, name: str = OWNED_BY_FILTER) -> None:
        self.typed_name = TypedName(OWNED_BY_FILTER, name)

    def filter(self, cycle: CycleState, request: LLMRequest, endpoints: list[EndpointState]) -> list[EndpointState]:
        wanted = (request.owned_by or "").strip().lower()
        if not wanted:
            return endpoints
        return [e for e in endpoints if e.endpoint.engine.lower() == wanted]


def factory(name: str, params: Mapping[str, Any], handle: PluginHandle) -> OwnedByFilter:
    decode_params(NoParams, params)
    return OwnedByFilter(name)
