"""``max-score-picker``: the highest total score wins; ties are broken at random.

Shuffle, then stable-sort by score descending, then take ``maxNumOfEndpoints`` (GIE): equal scores
land in random order, so ties never pile onto the first endpoint in discovery order.
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

MAX_SCORE_PICKER = "max-score-picker"


class MaxScorePicker(RandomizedPickerBase):
    PLUGIN_TYPE = MAX_SCORE_PICKER

    def pick(
        self, cycle: CycleState, request: LLMRequest, endpoints: list[EndpointState], scores: list[float]
    ) -> list[EndpointState]:
        if self.max_num_of_endpoints == 1:
            best = max(scores)
            top = [i for i, s in enumerate(scores) if s == best]
            return [endpoints[top[0] if len(top) == 1 else self._rng.choice(top)]]
        order = list(range(len(endpoints)))
        self._rng.shuffle(order)
        order.sort(key=scores.__getitem__, reverse=True)
        return [endpoints[i] for i in order[: self.max_num_of_endpoints]]


def factory(name: str, params: Mapping[str, Any], handle: PluginHandle) -> MaxScorePicker:
    return MaxScorePicker(name, decode_params(PickerParams, params).max_num_of_endpoints, handle.child_rng())
