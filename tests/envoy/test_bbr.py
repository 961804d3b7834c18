"""``with_body_router``: where the router goes in a rendered bootstrap, and what the routes match."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

from epp.envoy.bbr import ROUTER_CLUSTER, ROUTER_FILTER, ModelRoute, RouterProcess, with_body_router
from epp.envoy.config import Upstream, render
from epp.envoy.stack import local_config

A, B, ROUTER = Upstream("127.0.0.1", 8001), Upstream("127.0.0.1", 8002), Upstream("127.0.0.1", 9004)


def manager(bootstrap: dict[str, Any]) -> dict[str, Any]:
    found: dict[str, Any] = bootstrap["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]
    return found["typed_config"]  # type: ignore[no-any-return]


def test_router_filter_first_and_routes_on_its_headers(tmp_path: Path) -> None:
    base = render(local_config(Upstream("127.0.0.1", 9002), [A, B], tmp_path))
    before = copy.deepcopy(base)
    out = with_body_router(base, ROUTER, [
        ModelRoute({"x-gateway-model-name": "m", "x-gateway-engine": "sglang"}, A),
        ModelRoute({"x-gateway-base-model-name": "m"}, B),
    ])
    assert base == before  # the input is not modified
    names = [f["name"] for f in manager(out)["http_filters"]]
    assert names[0] == ROUTER_FILTER and names[-1] == "envoy.filters.http.router"
    assert names[1:] == [f["name"] for f in manager(base)["http_filters"]]  # the picker etc. still follow
    mode = manager(out)["http_filters"][0]["typed_config"]["processing_mode"]
    assert (mode["request_body_mode"], mode["response_header_mode"], mode["response_body_mode"]) == (
        "BUFFERED", "SKIP", "NONE")
    routes = manager(out)["route_config"]["virtual_hosts"][0]["routes"]
    assert [r["match"]["headers"] for r in routes] == [
        [{"name": "x-gateway-model-name", "string_match": {"exact": "m"}},
         {"name": "x-gateway-engine", "string_match": {"exact": "sglang"}}],
        [{"name": "x-gateway-base-model-name", "string_match": {"exact": "m"}}],
    ]
    clusters = {c["name"]: c for c in out["static_resources"]["clusters"]}
    targets = [clusters[r["route"]["cluster"]]["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]
               ["address"]["socket_address"]["port_value"] for r in routes]
    assert targets == [8001, 8002]
    assert "typed_extension_protocol_options" in clusters[ROUTER_CLUSTER]  # gRPC: HTTP/2


def test_streaming_router_sends_trailers() -> None:
    out = with_body_router(render(local_config(None, [A], Path("/tmp"), strip_client_destination=False)),
                           ROUTER, [], streaming=True)
    mode = manager(out)["http_filters"][0]["typed_config"]["processing_mode"]
    assert (mode["request_body_mode"], mode["request_trailer_mode"]) == ("FULL_DUPLEX_STREAMED", "SEND")


def test_router_process_command() -> None:
    proc = RouterProcess(extra_args=["--models=m"])
    command = proc.command()
    assert command[1:4] == ["-m", "epp", "bbr"]
    assert f"--grpc-port={proc.grpc_port}" in command and command[-1] == "--models=m"
