"""The rendered bootstrap: every supported combination passes Envoy's own validation, and the parts that
matter for routing safety are where they must be."""

from __future__ import annotations

import itertools
import subprocess
from pathlib import Path
from typing import Any

import pytest

from epp.envoy.config import DESTINATION_HEADER, BodyMode, EnvoyConfig, Routing, Upstream, render, to_yaml
from epp.cli import build_parser
from epp.envoy.cli import config_from_args
from epp.envoy.process import find_envoy

PICKER = Upstream("127.0.0.1", 9002)
POOL = (Upstream("127.0.0.1", 8001), Upstream("127.0.0.1", 8002))


def make(**options: Any) -> EnvoyConfig:
    return EnvoyConfig(**({"listen_port": 10000, "admin_port": 10001, "picker": PICKER,
                           "access_log_path": "/dev/null", "pool": POOL} | options))  # fmt: skip


def http_filters(bootstrap: dict[str, Any]) -> list[dict[str, Any]]:
    manager = bootstrap["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    return manager["http_filters"]  # type: ignore[no-any-return]


def ext_proc(bootstrap: dict[str, Any]) -> dict[str, Any]:
    return next(f["typed_config"] for f in http_filters(bootstrap) if f["name"] == "envoy.filters.http.ext_proc")


def clusters(bootstrap: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["name"]: c for c in bootstrap["static_resources"]["clusters"]}


COMBINATIONS = [
    {"routing": routing, "request_body_mode": request, "response_body_mode": response}
    for routing, request, response in itertools.product(
        Routing, [BodyMode.FULL_DUPLEX_STREAMED, BodyMode.BUFFERED], list(BodyMode))
] + [{"picker_tls": True}, {"failure_mode_allow": True, "routing": Routing.OVERRIDE_HOST},
      {"picker_replicas": (Upstream("127.0.0.1", 9012),), "picker_tls": True}]  # fmt: skip


def test_every_combination_passes_envoy_validation(tmp_path: Path) -> None:
    variants = [make(**c) for c in COMBINATIONS] + [
        make(picker=None, strip_client_destination=False),
        make(subset_hint=("10.0.0.1",)),
        make(subset_hint=()),
        make(response_headers=False, response_body_mode=BodyMode.NONE, retries=0),
    ]
    envoy = find_envoy()
    for index, cfg in enumerate(variants):
        path = tmp_path / f"{index}.yaml"
        path.write_text(to_yaml(cfg))
        checked = subprocess.run([envoy, "--mode", "validate", "-c", str(path), "--log-level", "error"],
                                 capture_output=True, text=True, timeout=60, check=False)  # fmt: skip
        assert checked.returncode == 0, (cfg, checked.stdout + checked.stderr)


def test_client_destination_is_stripped_before_ext_proc() -> None:
    names = [f["name"] for f in http_filters(render(make()))]
    assert names == ["envoy.filters.http.header_mutation", "envoy.filters.http.ext_proc", "envoy.filters.http.router"]
    mutation = http_filters(render(make()))[0]["typed_config"]["mutations"]["request_mutations"]
    assert mutation == [{"remove": DESTINATION_HEADER}]


def test_reference_processing_mode_and_metadata_namespace() -> None:
    config = ext_proc(render(make()))
    assert config["processing_mode"] == {
        "request_header_mode": "SEND", "request_body_mode": "FULL_DUPLEX_STREAMED", "request_trailer_mode": "SEND",
        "response_header_mode": "SEND", "response_body_mode": "FULL_DUPLEX_STREAMED", "response_trailer_mode": "SEND",
    }  # fmt: skip
    assert config["metadata_options"] == {"receiving_namespaces": {"untyped": ["envoy.lb"]}}
    assert config["failure_mode_allow"] is False


def test_picker_cluster_speaks_http2_and_tls_only_when_asked() -> None:
    plain = clusters(render(make()))["epp"]
    options = plain["typed_extension_protocol_options"]["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"]
    assert options["explicit_http_config"] == {"http2_protocol_options": {}}
    assert "transport_socket" not in plain
    tls = clusters(render(make(picker_tls=True)))["epp"]["transport_socket"]["typed_config"]
    assert tls["common_tls_context"]["alpn_protocols"] == ["h2"]


def test_routing_flavours() -> None:
    original = clusters(render(make()))["pool"]
    assert original["type"] == "ORIGINAL_DST"
    assert original["original_dst_lb_config"] == {"use_http_header": True, "http_header_name": DESTINATION_HEADER}
    override = clusters(render(make(routing=Routing.OVERRIDE_HOST)))["pool"]
    assert override["type"] == "STATIC"
    members = override["load_assignment"]["endpoints"][0]["lb_endpoints"]
    assert [m["endpoint"]["address"]["socket_address"]["port_value"] for m in members] == [8001, 8002]


def test_baseline_without_picker_has_no_ext_proc() -> None:
    bootstrap = render(make(picker=None, strip_client_destination=False))
    assert [f["name"] for f in http_filters(bootstrap)] == ["envoy.filters.http.router"]
    assert set(clusters(bootstrap)) == {"pool"}


def test_subset_hint_is_set_and_forwarded() -> None:
    bootstrap = render(make(subset_hint=("10.0.0.1",)))
    names = [f["name"] for f in http_filters(bootstrap)]
    assert names.index("envoy.filters.http.set_metadata") < names.index("envoy.filters.http.ext_proc")
    assert ext_proc(bootstrap)["metadata_options"]["forwarding_namespaces"] == {"untyped": ["envoy.lb.subset_hint"]}


def test_override_host_reports_the_served_endpoint_to_epp() -> None:
    bootstrap = render(make(routing=Routing.OVERRIDE_HOST, subset_hint=("10.0.0.1",)))
    forwarded = ext_proc(bootstrap)["metadata_options"]["forwarding_namespaces"]["untyped"]
    assert forwarded == ["envoy.lb.subset_hint", "envoy.lb"]
    policy = clusters(bootstrap)["pool"]["load_balancing_policy"]["policies"][0]["typed_extension_config"]
    assert policy["typed_config"]["selected_host_key"] == {
        "key": "envoy.lb", "path": [{"key": "x-gateway-destination-endpoint-served"}],
    }
    assert "forwarding_namespaces" not in ext_proc(render(make()))["metadata_options"]


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"routing": Routing.OVERRIDE_HOST, "pool": ()}, "pool member"),
        ({"response_headers": False}, "response headers"),
        ({"picker": None}, "strip_client_destination"),
    ],
)
def test_inconsistent_configs_are_refused(options: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        make(**options)


def test_picker_replicas_make_a_health_checked_cluster_with_stream_retries() -> None:
    single = clusters(render(make()))["epp"]
    assert "health_checks" not in single and "outlier_detection" not in single  # one picker: nothing to choose
    replicas = (Upstream("127.0.0.1", 9012), Upstream("127.0.0.1", 9022))
    bootstrap = render(make(picker_replicas=replicas))
    cluster = clusters(bootstrap)["epp"]
    members = cluster["load_assignment"]["endpoints"][0]["lb_endpoints"]
    assert [m["endpoint"]["address"]["socket_address"]["port_value"] for m in members] == [9002, 9012, 9022]
    (check,) = cluster["health_checks"]
    assert check["grpc_health_check"] == {"service_name": "envoy.service.ext_proc.v3.ExternalProcessor"}
    assert check["unhealthy_threshold"] == 1 and check["no_traffic_interval"] == check["interval"]
    assert cluster["outlier_detection"]["consecutive_local_origin_failure"] == 1
    grpc_service = ext_proc(bootstrap)["grpc_service"]["envoy_grpc"]
    assert "connect-failure" in grpc_service["retry_policy"]["retry_on"]
    with pytest.raises(ValueError, match="first picker"):
        make(picker=None, strip_client_destination=False, picker_replicas=replicas)
    args = build_parser().parse_args(["envoy-config", "--static-endpoints", "10.0.0.1:8000",
                                      "--picker", "10.0.0.2:9002,10.0.0.3:9002"])
    config = config_from_args(args)
    assert config.pickers == (Upstream("10.0.0.2", 9002), Upstream("10.0.0.3", 9002))
