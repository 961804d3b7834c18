"""The parameter every picker shares."""

from __future__ import annotations

from dataclasses import dataclass

from epp.plugin.params import ParamError


@dataclass(frozen=True, slots=True)
class PickerParams:
    """``maxNumOfEndpoints``: how many endpoints to return, best first (the rest are fallbacks)."""

    max_num_of_endpoints: int = 1

    def __post_init__(self) -> None:
        if self.max_num_of_endpoints < 1:
            raise ParamError("maxNumOfEndpoints", "must be at least 1")
