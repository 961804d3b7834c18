"""What every picker owns: its typed name, a validated ``maxNumOfEndpoints`` and (for the random ones)
an injected generator. One place, so a picker built in code is checked exactly like one built from a
config (``PickerParams`` is the check)."""

from __future__ import annotations

import random
from typing import ClassVar

from epp.plugin.typed_name import TypedName
from epp.scheduling.plugins.pickers._params import PickerParams


class PickerBase:
    """``name`` defaults to the plugin type; ``max_num_of_endpoints`` < 1 raises ``ParamError``."""

    PLUGIN_TYPE: ClassVar[str]

    def __init__(self, name: str | None = None, max_num_of_endpoints: int = 1) -> None:
        self.typed_name = TypedName(self.PLUGIN_TYPE, self.PLUGIN_TYPE if name is None else name)
        self.max_num_of_endpoints = PickerParams(max_num_of_endpoints).max_num_of_endpoints


class RandomizedPickerBase(PickerBase):
    """A picker that draws from ``rng`` (a fresh unseeded one when none is given)."""

    def __init__(self, name: str | None = None, max_num_of_endpoints: int = 1, rng: random.Random | None = None) -> None:
        super().__init__(name, max_num_of_endpoints)
        self._rng = rng or random.Random()
