"""disaggregatedset-rollout-screener: built from llm-d's README config, fed pool membership as the
datastore feeds it, and driven through the scheduler's request path."""

from __future__ import annotations

import random
from collections import Counter
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from epp.config import ConfigError, load_scheduler_text
from epp.request import RequestError
from epp.scheduling.plugins.requestcontrol.disaggregatedset_rollout import (
    DisaggregatedSetRolloutScreener,
    parse_label_selector,
)
from epp.scheduling.scheduler import Scheduler
from tests.conftest import make_request, make_state

README = (Path(__file__).parents[2] / "config" / "data" / "upstream-epp-configs"
          / "llm-d__llm-d-router__pkg__epp__framework__plugins__requestcontrol__screener__disaggregatedsetrollout__README.md__L251.yaml")
REV, ROLE, SLICE, SET = ("disaggregatedset.x-k8s.io/revision", "disaggregatedset.x-k8s.io/role",
                         "disaggregatedset.x-k8s.io/slice", "disaggregatedset.x-k8s.io/name")


def pods(revision: str, prefill: int, decode: int, dset: str = "my-set") -> list:  # type: ignore[type-arg]
    return [
        make_state(f"{revision}-{role}-{i}", labels={REV: revision, ROLE: role, SLICE: f"s{i % 2}", SET: dset})
        for role, n in (("prefill", prefill), ("decode", decode)) for i in range(n)
    ]


def build(mode: str = "max-role", *states_lists: list) -> tuple[Scheduler, DisaggregatedSetRolloutScreener, list]:  # type: ignore[type-arg]
    scheduler = load_scheduler_text(README.read_text().replace("mode: max-role", f"mode: {mode}"), rng=random.Random(5))
    (screener,) = scheduler.screeners
    assert isinstance(screener, DisaggregatedSetRolloutScreener)
    states = [s for lst in states_lists for s in lst]
    for s in states:
        screener.endpoint_added(s.endpoint)
    return scheduler, screener, states


def revision_shares(scheduler: Scheduler, states: list, n: int = 3000) -> dict[str, float]:  # type: ignore[type-arg]
    picked = Counter(scheduler.schedule(make_request(), states).endpoints[0].endpoint.labels[REV] for _ in range(n))
    return {rev: c / n for rev, c in picked.items()}


def test_max_role_weights_revisions_by_the_globally_largest_role() -> None:
    # the README's 2P:10D rollout step: A {prefill 2, decode 9}, B {prefill 1, decode 1} → decode dominates → 90/10
    scheduler, screener, states = build("max-role", pods("A", 2, 9), pods("B", 1, 1))
    assert screener.shares() == pytest.approx({"A": 0.9, "B": 0.1})
    assert revision_shares(scheduler, states)["B"] == pytest.approx(0.1, abs=0.025)


def test_sum_weights_revisions_by_all_required_roles() -> None:
    scheduler, screener, states = build("sum", pods("A", 2, 9), pods("B", 1, 1))
    assert screener.shares() == pytest.approx({"A": 11 / 13, "B": 2 / 13})
    assert revision_shares(scheduler, states)["B"] == pytest.approx(2 / 13, abs=0.025)


def test_a_revision_missing_a_role_gets_nothing_and_out_of_scope_pods_do_not_count() -> None:
    other_set = pods("C", 5, 5, dset="other-set")
    scheduler, screener, states = build("max-role", pods("A", 1, 3), pods("B", 0, 4), other_set)
    assert screener.shares() == {"A": 1.0, "B": 0.0}
    assert revision_shares(scheduler, states, 200) == {"A": 1.0}
    for s in pods("A", 1, 3):  # A's pods leave: nothing is covered, and the screener fails closed
        screener.endpoint_removed(s.endpoint)
    with pytest.raises(RequestError) as caught:
        scheduler.schedule(make_request(), states)
    assert caught.value.status == 503


def test_strict_header_keeps_its_revision_and_fails_closed_without_a_match() -> None:
    scheduler, screener, states = build("max-role", pods("A", 2, 9), pods("B", 1, 1))
    registry = CollectorRegistry()
    screener.register_metrics(registry)
    for _ in range(50):
        result = scheduler.schedule(make_request(headers={"x-disagg-revision": "B"}), states)
        assert result.endpoints[0].endpoint.labels[REV] == "B"
    with pytest.raises(RequestError) as caught:
        scheduler.schedule(make_request(headers={"x-disagg-revision": "Z"}), states)
    assert caught.value.status == 503
    assert registry.get_sample_value(
        "llm_d_epp_disaggregatedset_strict_header_no_match_total", {"plugin": "rollout-screener", "selector": "revision"}
    ) == 1
    assert registry.get_sample_value(
        "llm_d_epp_disaggregatedset_revision_gating_share", {"plugin": "rollout-screener", "revision": "B"}
    ) == pytest.approx(0.1)


def test_disabled_gating_keeps_everything_and_every_selector_stamps_the_response() -> None:
    scheduler, _, states = build("disabled", pods("A", 1, 1), pods("B", 0, 1))
    assert set(revision_shares(scheduler, states, 300)) == {"A", "B"}  # no coverage check, no draw
    request = make_request()
    served = scheduler.schedule(request, states).endpoints[0]
    headers = scheduler.response_headers(request, served)
    assert headers["x-disagg-revision"] == served.endpoint.labels[REV]
    assert headers["x-disagg-slice"] == served.endpoint.labels[SLICE]


@pytest.mark.parametrize(("old", "new", "field"), [
    ('labelSelector: "disaggregatedset.x-k8s.io/name=my-set"', 'labelSelector: ""', "scope.labelSelector"),
    ("mode: max-role", "mode: newest", "revisionGating.mode"),
    ("values: [prefill, decode]", "values: []", "requireRoles.values"),
    ("mode: prefer", "mode: maybe", "headerSelectors[1].mode"),
])
def test_invalid_parameters_fail_the_config_naming_the_field(old: str, new: str, field: str) -> None:
    with pytest.raises(ConfigError, match=field.replace("[", r"\[").replace("]", r"\]")):
        load_scheduler_text(README.read_text().replace(old, new))


def test_label_selector_strings() -> None:
    sel = parse_label_selector("app=vllm, tier notin (canary), zone in (a, b), gpu, !legacy, track!=beta")
    assert sel({"app": "vllm", "zone": "a", "gpu": "h100", "track": "stable"})
    assert not sel({"app": "vllm", "zone": "c", "gpu": "h100"})
    assert not sel({"app": "vllm", "zone": "a", "gpu": "h100", "tier": "canary"})
    assert not sel({"app": "vllm", "zone": "a", "gpu": "h100", "legacy": "1"})
    assert not sel({"app": "vllm", "zone": "a"})
    with pytest.raises(ValueError):
        parse_label_selector("app in ()")
