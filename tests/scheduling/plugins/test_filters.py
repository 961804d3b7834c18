"""Filters on crafted endpoints."""

from __future__ import annotations

import pytest

from epp.datastore import EndpointMetrics
from epp.scheduling.framework import CycleState
from epp.scheduling.plugins.filters.header_based_testing import HeaderBasedTestingFilter
from epp.scheduling.plugins.filters.model_availability import ModelAvailabilityFilter
from epp.scheduling.plugins.filters.owned_by import OwnedByFilter
from epp.scheduling.plugins.filters.role import DECODE_FILTER, ENCODE_FILTER, PREFILL_FILTER, RoleFilter
from epp.scheduling.plugins.filters.sglang_imbalance import ImbalanceParams, SGLangImbalanceFilter
from tests.conftest import make_request, make_state


def names(endpoints: list) -> list[str]:  # type: ignore[type-arg]
    return [e.name for e in endpoints]


def test_model_availability_keeps_servers_of_the_model_or_adapter_and_the_unknown() -> None:
    endpoints = [
        make_state("base", metrics=EndpointMetrics(0.0, models=frozenset({"llama"}))),
        make_state("other", metrics=EndpointMetrics(0.0, models=frozenset({"qwen"}))),
        make_state("adapter", metrics=EndpointMetrics(0.0, models=frozenset({"llama"}), active_loras=frozenset({"sql"}), max_lora=2)),
        make_state("loading", metrics=EndpointMetrics(0.0, waiting_loras=frozenset({"sql"}), max_lora=2)),
        make_state("no-info", metrics=EndpointMetrics(0.0)),
        make_state("never-scraped"),
    ]
    f = ModelAvailabilityFilter()
    assert names(f.filter(CycleState(), make_request(model="llama"), endpoints)) == ["base", "adapter", "no-info", "never-scraped"]
    assert names(f.filter(CycleState(), make_request(model="sql"), endpoints)) == ["adapter", "loading", "no-info", "never-scraped"]
    assert names(f.filter(CycleState(), make_request(model="qwen", target_model="qwen"), endpoints[:3])) == ["other"]


def test_model_availability_reads_v1_models_ids_from_the_models_data_source() -> None:
    listed = make_state("listed")
    listed.attributes["model_ids"] = frozenset({"tiny-llama"})
    scraped = make_state("scraped", metrics=EndpointMetrics(0.0))
    scraped.attributes["model_ids"] = frozenset({"qwen"})
    f = ModelAvailabilityFilter()
    endpoints = [listed, scraped, make_state("never-scraped")]
    assert names(f.filter(CycleState(), make_request(model="tiny-llama"), endpoints)) == ["listed", "never-scraped"]
    assert names(f.filter(CycleState(), make_request(model="qwen"), endpoints)) == ["scraped", "never-scraped"]


@pytest.mark.parametrize(("owned_by", "expected"), [(None, ["v", "s", "t"]), ("sglang", ["s"]), ("VLLM", ["v"]), ("tgi", [])])
def test_owned_by_filter(owned_by: str | None, expected: list[str]) -> None:
    endpoints = [
        make_state("v"),
        make_state("s", labels={"llm-d.ai/engine-type": "sglang"}),
        make_state("t", labels={"inference.networking.k8s.io/engine-type": "trtllm-serve"}),
    ]
    assert names(OwnedByFilter().filter(CycleState(), make_request(owned_by=owned_by), endpoints)) == expected


@pytest.mark.parametrize(
    ("plugin_type", "expected"),
    [(PREFILL_FILTER, ["p"]), (DECODE_FILTER, ["d", "b", "plain"]), (ENCODE_FILTER, ["e"])],
)
def test_role_filters(plugin_type: str, expected: list[str]) -> None:
    endpoints = [
        make_state("p", labels={"llm-d.ai/role": "prefill"}),
        make_state("d", labels={"llm-d.ai/role": "decode"}),
        make_state("b", labels={"llm-d.ai/role": "both"}),
        make_state("e", labels={"llm-d.ai/role": "encode"}),
        make_state("plain"),
    ]
    assert names(RoleFilter(plugin_type).filter(CycleState(), make_request(), endpoints)) == expected


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (None, []),
        ("  ", []),
        ("10.0.0.2", ["b3002"]),  # bare ip: one endpoint of that pod (the last listed)
        ("10.0.0.2:3000", ["b3000"]),
        ("10.0.0.3:3000, 10.0.0.1", ["c", "a"]),  # header order
        ("10.0.0.2:3000,10.0.0.2:3002", ["b3000"]),  # one endpoint per address
        ("10.0.0.9, 10.0.0.1:9999", []),
        ("[fd00::1]:3000,fd00::1", ["v6"]),
    ],
)
def test_header_based_testing_filter(header: str | None, expected: list[str]) -> None:
    endpoints = [
        make_state("a", address="10.0.0.1", port=3000),
        make_state("b3000", address="10.0.0.2", port=3000),
        make_state("b3002", address="10.0.0.2", port=3002),
        make_state("c", address="10.0.0.3", port=3000),
        make_state("v6", address="fd00::1", port=3000),
    ]
    headers = {} if header is None else {"test-epp-endpoint-selection": header}
    assert names(HeaderBasedTestingFilter().filter(CycleState(), make_request(headers=headers), endpoints)) == expected


@pytest.mark.parametrize(
    ("loads", "expected"),
    [
        ([0, 64], ["e0", "e1"]),  # gap 64 is not > 64
        ([0, 65], ["e0"]),
        ([100, 165, 100], ["e0", "e2"]),  # 165 > 1.5 × 100 and gap 65 > 64
        ([200, 280], ["e0", "e1"]),  # gap 80 but 280 ≤ 1.5 × 200
    ],
)
def test_sglang_imbalance_filter(loads: list[int], expected: list[str]) -> None:
    endpoints = [make_state(f"e{i}", inflight=c) for i, c in enumerate(loads)]
    assert names(SGLangImbalanceFilter(params=ImbalanceParams()).filter(CycleState(), make_request(), endpoints)) == expected
