"""``header-based-testing-filter`` (GIE conformance): route only where the test says.

Keeps the endpoints named in the ``test-epp-endpoint-selection`` request header, a comma list of
``ip`` or ``ip:port`` (IPv6 bracketed or bare). ``ip:port`` selects that exact endpoint; a bare ip
selects one endpoint with that address (the last listed, as the reference's map lookup does). Results
follow header order, one endpoint per address. Header absent or blank → no endpoint (the scheduler
then answers 429).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from epp.datastore import EndpointState
from epp.request import LLMRequest
from epp.plugin.typed_name import TypedName
from epp.scheduling.framework import CycleState
from epp.plugin.params import NoParams, decode_params
from epp.plugin.registry import PluginHandle

HEADER_BASED_TESTING_FILTER = "header-based-testing-filter"
SELECTION_HEADER = "test-epp-endpoint-selection"


def _split(item: str) -> tuple[str, str]:
    """(host, port) of ``ip``, ``ip:port``, ``[v6]`` or ``[v6]:port``; port may be empty."""
    if item.startswith("["):
        host, _, rest = item[1:].partition("]")
        return host, rest[1:] if rest.startswith(":") else ""
    if item.count(":") == 1:
        host, _, port = item.partition(":")
        return host, port
    return item, ""  # bare IPv4 or unbracketed IPv6


class HeaderBasedTestingFilter:
    def __init__(self, name: str = HEADER_BASED_TESTING_FILTER) -> None:
        self.typed_name = TypedName(HEADER_BASED_TESTING_FILTER, name)

    def filter(self, cycle: CycleState, request: LLMRequest, endpoints: list[EndpointState]) -> list[EndpointState]:
        value = request.headers.get(SELECTION_HEADER, "")
        if not value.strip():
            return []
        by_ip = {e.endpoint.address: e for e in endpoints}
        by_hostport = {f"{e.endpoint.address}:{e.endpoint.port}": e for e in endpoints}
        out: list[EndpointState] = []
        seen: set[str] = set()
        for raw in value.split(","):
            item = raw.strip()
            if not item:
                continue
            host, port = _split(item)
            found = by_hostport.get(f"{host}:{port}") if port else by_ip.get(host)
            if found is not None and found.endpoint.address not in seen:
                seen.add(found.endpoint.address)
                out.append(found)
        return out


def factory(name: str, params: Mapping[str, Any], handle: PluginHandle) -> HeaderBasedTestingFilter:
    decode_params(NoParams, params)
    return HeaderBasedTestingFilter(name)
