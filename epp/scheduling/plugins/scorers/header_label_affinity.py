"""``header-label-affinity-scorer`` (llm-d ``scorer/headerlabelaffinity``): a soft preference for
endpoints whose label ``labelKey`` equals the request header ``headerName`` (1, else 0; every endpoint
0 when the header is absent or empty). Nothing is filtered out.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from epp.datastore import EndpointState
from epp.request import LLMRequest
from epp.plugin.typed_name import TypedName
from epp.scheduling.framework import CycleState
from epp.plugin.params import ParamError, decode_params
from epp.plugin.registry import PluginHandle

HEADER_LABEL_AFFINITY_SCORER = "header-label-affinity-scorer"


@dataclass(frozen=True, slots=True)
class HeaderLabelParams:
    header_name: str = ""
    label_key: str = ""

    def __post_init__(self) -> None:
        if not self.header_name:
            raise ParamError("headerName", "is required")
        if not self.label_key:
            raise ParamError("labelKey", "is required")


class HeaderLabelAffinityScorer:
    def __init__(self, name: str, params: HeaderLabelParams) -> None:
        self.typed_name = TypedName(HEADER_LABEL_AFFINITY_SCORER, name)
        self.header = params.header_name.lower()  # request headers are lower-cased, as Envoy sends them
        self.label = params.label_key

    def score(self, cycle: CycleState, request: LLMRequest, endpoints: list[EndpointState]) -> list[float]:
        wanted = request.headers.get(self.header)
        if not wanted:
            return [0.0] * len(endpoints)
        label = self.label
        return [1.0 if e.endpoint.labels.get(label) == wanted else 0.0 for e in endpoints]


def factory(name: str, params: Mapping[str, Any], handle: PluginHandle) -> HeaderLabelAffinityScorer:
    return HeaderLabelAffinityScorer(name, decode_params(HeaderLabelParams, params))
