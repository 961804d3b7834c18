"""``random-picker``: uniformly random endpoints, scores ignored (GIE).

Returns ``maxNumOfEndpoints`` distinct endpoints in random order.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from epp.datastore import EndpointState
from epp.request import LLMRequest
from epp.scheduling.framework import CycleState
from epp.plugin.params import decode_params
from epp.scheduling.plugins.pickers._base import RandomizedPickerBase
from epp.scheduling.plugins.pickers._params import PickerParams
from epp.plugin.registry import PluginHandle

RANDOM_PICKER = "random-picker"


class RandomPicker(RandomizedPickerBase):
    PLUGIN_TYPE = RANDOM_PICKER

    def pick(
        self, cycle: CycleState, request: LLMRequest, endpoints: list[EndpointState], scores: list[float]
    ) -> list[EndpointState]:
        if self.max_num_of_endpoints == 1:
            return [self._rng.choice(endpoints)]
        return self._rng.sample(endpoints, min(self.max_num_of_endpoints, len(endpoints)))


def factory(name: str, params: Mapping[str, Any], handle: PluginHandle) -> RandomPicker:
    return RandomPicker(name, decode_params(PickerParams, params).max_num_of_endpoints, handle.child_rng())
