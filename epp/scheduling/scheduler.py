"""The scheduler loop: ask the profile handler which profiles to run until it says stop."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from epp.datastore import EndpointState
from epp.request import LLMRequest, RequestError
from epp.scheduling.framework import (
    CycleState,
    PreRequest,
    ProfileHandler,
    ProfileResult,
    ResponseComplete,
    SchedulingResult,
)
from epp.scheduling.profile import SchedulerProfile


class Scheduler:
    """Turns (request, candidate endpoints) into a ``SchedulingResult``.

    Raises ``RequestError`` 503 for no candidates and 429 (``rejected-saturated``) when every profile's
    filters left nothing, as the reference does.
    """

    def __init__(
        self,
        profiles: Mapping[str, SchedulerProfile],
        handler: ProfileHandler,
        pre_request: Sequence[PreRequest] = (),
        response_complete: Sequence[ResponseComplete] = (),
    ) -> None:
        if not profiles:
            raise ValueError("a scheduler needs at least one profile")
        self.profiles = dict(profiles)
        self.handler = handler
        self.pre_request_plugins = list(pre_request)
        self.response_complete_plugins = list(response_complete)

    def schedule(
        self, request: LLMRequest, candidates: list[EndpointState], cycle: CycleState | None = None
    ) -> SchedulingResult:
        if not candidates:
            raise RequestError(
                503, "no endpoints available to serve the request", error_type="service_unavailable",
                code="no_endpoints", reason="rejected-no-endpoints",
            )
        cycle = CycleState() if cycle is None else cycle
        results: dict[str, ProfileResult | None] = {}
        while True:
            todo = self.handler.pick_profiles(cycle, request, self.profiles, results)
            if not todo:
                break
            for name, profile in todo.items():
                results[name] = profile.run(cycle, request, candidates)
        result = self.handler.process_results(cycle, request, results)
        if not result.endpoints:
            raise RequestError(
                429, "all endpoints were filtered out or are saturated", error_type="rate_limit_exceeded",
                code="rejected_saturated", reason="rejected-saturated",
            )
        for plugin in self.pre_request_plugins:
            plugin.pre_request(cycle, request, result)
        return result

    def response_complete(self, request: LLMRequest, endpoint: EndpointState, usage: Mapping[str, int]) -> None:
        for plugin in self.response_complete_plugins:
            plugin.response_complete(request, endpoint, usage)
