"""``single-profile-handler``: run the one configured profile once; its result is the decision.

It takes no parameters. Upstream's factory never reads them, so configs in the wild give it some
(llm-d's discovery guide passes ``scorer``/``picker``); epp ignores them too, with one warning naming
them, instead of refusing a config upstream runs.
"""

from __future__ import annotations

from collections.abc import Mapping
import logging
from typing import Any

from epp.request import LLMRequest
from epp.plugin.typed_name import TypedName
from epp.scheduling.framework import CycleState, ProfileResult, SchedulingResult
from epp.scheduling.profile import SchedulerProfile
from epp.plugin.registry import PluginHandle

SINGLE_PROFILE_HANDLER = "single-profile-handler"

log = logging.getLogger(__name__)


class OneProfilePerRequest:
    """Base of handlers that run one profile per request: ``select`` names it, and its result is the decision."""

    def select(self, request: LLMRequest, profiles: Mapping[str, SchedulerProfile]) -> str:
        raise NotImplementedError

    def pick_profiles(
        self,
        cycle: CycleState,
        request: LLMRequest,
        profiles: Mapping[str, SchedulerProfile],
        results: Mapping[str, ProfileResult | None],
    ) -> dict[str, SchedulerProfile]:
        if results:
            return {}
        name = self.select(request, profiles)
        return {name: profiles[name]}

    def process_results(
        self, cycle: CycleState, request: LLMRequest, results: dict[str, ProfileResult | None]
    ) -> SchedulingResult:
        (name,) = results
        return SchedulingResult(results, name)


class SingleProfileHandler(OneProfilePerRequest):
    def __init__(self, name: str = SINGLE_PROFILE_HANDLER) -> None:
        self.typed_name = TypedName(SINGLE_PROFILE_HANDLER, name)

    def select(self, request: LLMRequest, profiles: Mapping[str, SchedulerProfile]) -> str:
        if len(profiles) != 1:
            raise ValueError(f"{self.typed_name.type} needs exactly one profile, got {len(profiles)}")
        return next(iter(profiles))


def factory(name: str, params: Mapping[str, Any], handle: PluginHandle) -> SingleProfileHandler:
    if params:
        log.warning("config: %s %r takes no parameters; ignoring %s (as upstream does)",
                    SINGLE_PROFILE_HANDLER, name, ", ".join(sorted(params)))
    return SingleProfileHandler(name)
