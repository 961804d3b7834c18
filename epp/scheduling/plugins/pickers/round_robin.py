"""``round-robin-picker``: take turns over the candidates, scores ignored (GIE's minimal picker).

Candidates are ordered by endpoint name so the rotation is stable while membership changes; a
counter advances one step per pick and ``maxNumOfEndpoints`` consecutive endpoints are returned.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from epp.datastore import EndpointState
from epp.request import LLMRequest
from epp.scheduling.framework import CycleState
from epp.plugin.params import decode_params
from epp.scheduling.plugins.pickers._base import PickerBase
from epp.scheduling.plugins.pickers._params import PickerParams
from epp.plugin.registry import PluginHandle

ROUND_ROBIN_PICKER = "round-robin-picker"


class RoundRobinPicker(PickerBase):
    PLUGIN_TYPE = ROUND_ROBIN_PICKER

    def __init__(self, name: str | None = None, max_num_of_endpoints: int = 1) -> None:
        super().__init__(name, max_num_of_endpoints)
        self._next = 0

    def pick(
        self, cycle: CycleState, request: LLMRequest, endpoints: list[EndpointState], scores: list[float]
    ) -> list[EndpointState]:
        ordered = sorted(endpoints, key=lambda e: e.name)
        start = self._next % len(ordered)
        self._next = start + 1
        count = min(self.max_num_of_endpoints, len(ordered))
        return [ordered[(start + i) % len(ordered)] for i in range(count)]


def factory(name: str, params: Mapping[str, Any], handle: PluginHandle) -> RoundRobinPicker:
    return RoundRobinPicker(name, decode_params(PickerParams, params).max_num_of_endpoints)
