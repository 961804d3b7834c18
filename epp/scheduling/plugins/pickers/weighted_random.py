"""``weighted-random-picker``: random endpoints with probability proportional to their total score.

Weighted sampling without replacement by keys k = u^(1/score), u uniform in (0, 1), highest keys
first (Efraimidis–Spirakis, as GIE): one endpoint is chosen with probability score / Σ scores.
Endpoints scoring 0 come only after every positive one; all zero → uniform.
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

WEIGHTED_RANDOM_PICKER = "weighted-random-picker"


class WeightedRandomPicker(RandomizedPickerBase):
    PLUGIN_TYPE = WEIGHTED_RANDOM_PICKER

    def pick(
        self, cycle: CycleState, request: LLMRequest, endpoints: list[EndpointState], scores: list[float]
    ) -> list[EndpointState]:
        rng = self._rng
        if not any(s > 0 for s in scores):
            return rng.sample(endpoints, min(self.max_num_of_endpoints, len(endpoints)))
        # 1 - random() lies in (0, 1], so every positive score gets a key in (0, 1]; zero scores get
        # negative keys (still random among themselves) and sort after all positive ones.
        keys = [(1.0 - rng.random()) ** (1.0 / s) if s > 0 else -rng.random() for s in scores]
        order = sorted(range(len(endpoints)), key=keys.__getitem__, reverse=True)
        return [endpoints[i] for i in order[: self.max_num_of_endpoints]]


def factory(name: str, params: Mapping[str, Any], handle: PluginHandle) -> WeightedRandomPicker:
    return WeightedRandomPicker(name, decode_params(PickerParams, params).max_num_of_endpoints, handle.child_rng())
