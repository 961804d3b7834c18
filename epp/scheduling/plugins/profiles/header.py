"""``header-profile-handler`` (llm-d): run the one scheduling profile a request header names.

For a caller (a coordinator) that makes one scheduling call per stage and already knows the stage:
``EPP-Profile: prefill`` runs only the ``prefill`` profile, which becomes the primary result. With one
profile configured it always runs, header or not; with several, a missing or blank header runs
``defaultProfile`` (``decode``), e.g. for ``GET /models``. Parameters: ``headerName`` (``EPP-Profile``,
matched case-insensitively, as every header is) and ``defaultProfile`` (matched verbatim, like the
header's value; both trimmed).

A value naming no configured profile is the client's error. Upstream cannot carry that reason out of
its scheduler and answers a bare 429, which its README calls misleading; epp answers 400 naming the
header and the value. A missing header when ``defaultProfile`` is not configured is a config error
and answers 503 saying so.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from epp.request import LLMRequest
from epp.request.errors import RequestError
from epp.plugin.typed_name import TypedName
from epp.plugin.params import decode_params
from epp.scheduling.plugins.profiles.single import OneProfilePerRequest
from epp.scheduling.profile import SchedulerProfile
from epp.plugin.registry import PluginHandle

HEADER_PROFILE_HANDLER = "header-profile-handler"
DEFAULT_HEADER = "EPP-Profile"
DEFAULT_PROFILE = "decode"


@dataclass(frozen=True, slots=True)
class HeaderProfileParams:
    header_name: str = ""
    default_profile: str = ""


class HeaderProfileHandler(OneProfilePerRequest):
    def __init__(self, name: str = HEADER_PROFILE_HANDLER, header_name: str = "", default_profile: str = "") -> None:
        self.typed_name = TypedName(HEADER_PROFILE_HANDLER, name)
        self.header_name = header_name.strip().lower() or DEFAULT_HEADER.lower()
        self.default_profile = default_profile.strip() or DEFAULT_PROFILE

    def select(self, request: LLMRequest, profiles: Mapping[str, SchedulerProfile]) -> str:
        """The profile this request runs; a ``RequestError`` when none of the configured ones fits."""
        if len(profiles) == 1:
            return next(iter(profiles))
        named = request.headers.get(self.header_name, "").strip()
        wanted = named or self.default_profile
        if wanted in profiles:
            return wanted
        if named:
            raise RequestError(
                400,
                f"no scheduling profile configured for {self.header_name} header value {named!r}"
                f" (configured: {', '.join(sorted(profiles))})",
                code="unknown_profile",
            )
        raise RequestError(
            503,
            f"missing {self.header_name} header and {HEADER_PROFILE_HANDLER}'s defaultProfile {self.default_profile!r}"
            " is not a configured scheduling profile",
            error_type="service_unavailable",
            code="default_profile_not_configured",
        )


def factory(name: str, params: Mapping[str, Any], handle: PluginHandle) -> HeaderProfileHandler:
    p = decode_params(HeaderProfileParams, params)
    return HeaderProfileHandler(name, p.header_name, p.default_profile)
