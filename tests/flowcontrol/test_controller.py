"""The flow controller behind the real director and datastore, on a virtual clock: queueing while
saturated, band order and head-of-line blocking, fairness, ordering, limits, deadlines, cancellation."""

from __future__ import annotations

import random
from collections.abc import Sequence

import orjson
import pytest

from epp._util.clock import VirtualClock
from epp.config import parse_config_text
from epp.datastore import Datastore, Endpoint, EndpointState
from epp.director import Director, Failure, RoutingDecision
from epp.flowcontrol.build import flow_control_settings
from epp.flowcontrol.controller import FlowController
from epp.request import LLMRequest, RequestError
from epp.request.parse import parse_request
from epp.request.usage import Usage
from epp.config.presets import build_preset
from epp.telemetry import Telemetry

HEAD = """apiVersion: llm-d.ai/v1
kind: EndpointPickerConfig
featureGates: [flowControl]
plugins:
- type: round-robin-fairness-policy
- type: global-strict-fairness-policy
- type: fcfs-ordering-policy
- type: edf-ordering-policy
- type: slo-deadline-ordering-policy
- type: soft-reflective-ceiling-policy
- type: program-aware-fairness
"""


class InFlightDetector:
    """Saturation = requests in flight ÷ (endpoints × ``per_endpoint``): reacts at once to dispatches."""

    def __init__(self, per_endpoint: int) -> None:
        self.per_endpoint = per_endpoint

    def saturation(self, endpoints: Sequence[EndpointState]) -> float:
        if not endpoints:
            return 1.0
        return sum(e.inflight_requests for e in endpoints) / (len(endpoints) * self.per_endpoint)

    def is_saturated(self, endpoints: Sequence[EndpointState]) -> bool:
        return self.saturation(endpoints) >= 1.0


class Rig:
    def __init__(self, flow_control: str, endpoints: int = 1, per_endpoint: int = 2) -> None:
        self.clock = VirtualClock()
        self.store = Datastore(self.clock, staleness_threshold=1e9)
        for i in range(endpoints):
            self.store.upsert(Endpoint(f"10.0.0.{i + 1}:8000", f"10.0.0.{i + 1}", 8000))
        self.store.mark_synced()
        settings = flow_control_settings(parse_config_text(HEAD + flow_control))
        assert settings is not None
        # the pool flow control measures, as serve and replay wire it: the routable (not ejected) endpoints
        self.controller = FlowController(settings, InFlightDetector(per_endpoint), self.store.routable_endpoints,
                                         self.clock)
        self.director = Director(self.store, build_preset("least-inflight"), Telemetry(self.store),
                                 admission=self.controller, clock=self.clock, rng=random.Random(0))
        self.outcomes: dict[str, RoutingDecision | RequestError] = {}
        self.order: list[str] = []

    def send(self, rid: str, priority: int = 0, flow: str = "f", headers: dict[str, str] | None = None,
             size: int = 100) -> object:
        body = orjson.dumps({"model": "m", "prompt": "x" * size})
        request = parse_request(rid, {":path": "/v1/completions", "x-llm-d-inference-fairness-id": flow,
                                      **(headers or {})}, body)
        request.priority = priority

        def done(outcome: RoutingDecision | RequestError) -> None:
            self.outcomes[rid] = outcome
            self.order.append(rid)

        return self.director.submit(request, len(body), None, done)

    def finish(self, rid: str, usage: Usage | None = None, failure: Failure | None = None) -> None:
        decision = self.outcomes[rid]
        assert isinstance(decision, RoutingDecision)
        self.director.finish(decision, usage, failure=failure)

    def routed(self) -> list[str]:
        return [rid for rid in self.order if isinstance(self.outcomes[rid], RoutingDecision)]


def test_requests_wait_while_saturated_and_go_in_priority_order() -> None:
    rig = Rig("flowControl:\n  priorityBands:\n  - priority: 100\n  - priority: 0\n")
    assert rig.send("a") is None and rig.send("b") is None  # room for two: dispatched at once
    assert rig.send("low1", 0) is not None
    assert rig.send("high", 100) is not None
    assert rig.send("low2", 0) is not None
    assert rig.controller.waiting == 3 and rig.routed() == ["a", "b"]
    rig.finish("a")
    assert rig.routed() == ["a", "b", "high"]  # the high band goes first although it came later
    rig.finish("b")
    rig.finish("high")
    assert rig.routed() == ["a", "b", "high", "low1", "low2"]
    assert rig.controller.waiting == 0 and rig.controller.queued_bytes == 0


def test_a_failed_request_frees_its_capacity_and_an_ejected_endpoint_is_no_room() -> None:
    """Issue #16 with flow control: saturation is measured over the endpoints a request may go to (an
    ejected one is no room for the queue), and a failed request releases its slot like a completed one."""
    rig = Rig("flowControl: {}\n", endpoints=2, per_endpoint=1)
    dead = rig.store.endpoints()[1]
    for _ in range(3):  # --endpoint-health-consecutive-failures
        rig.store.request_outcome(dead, "http-503")
    assert rig.store.routable_endpoints() == [rig.store.endpoints()[0]]
    assert rig.send("a") is None
    assert rig.send("b") is not None  # the one routable endpoint is full: b waits, not piled onto it
    rig.finish("a", failure=Failure("http-503"))
    assert rig.routed() == ["a", "b"] and rig.controller.waiting == 0
    routed_b = rig.outcomes["b"]
    assert isinstance(routed_b, RoutingDecision) and routed_b.endpoints[0].name == "10.0.0.1:8000"


def test_full_band_sheds_with_429_and_empty_pool_with_503() -> None:
    rig = Rig("flowControl:\n  maxRequests: 1k\n  priorityBands:\n  - priority: 0\n    maxRequests: 2\n")
    for rid in ("a", "b", "q1", "q2"):
        rig.send(rid)
    rig.send("over")
    error = rig.outcomes["over"]
    assert isinstance(error, RequestError) and error.status == 429 and error.reason == "rejected-saturated"
    empty = Rig("flowControl:\n  priorityBands:\n  - priority: 0\n    maxRequests: 1\n", endpoints=0)
    assert empty.send("wait") is not None  # an empty pool is waited for, not refused at once
    empty.send("over")
    error = empty.outcomes["over"]
    assert isinstance(error, RequestError) and error.status == 503 and error.reason == "rejected-no-endpoints"


def test_global_byte_limit() -> None:
    rig = Rig("flowControl:\n  maxBytes: 1Ki\n")
    rig.send("a")
    rig.send("b")
    rig.send("q1", size=600)
    rig.send("q2", size=600)
    assert isinstance(rig.outcomes["q2"], RequestError)
    assert rig.controller.queued_bytes < 1024


def test_ttl_expiry_and_header_ttl() -> None:
    rig = Rig("flowControl:\n  defaultRequestTTL: 10s\n")
    rig.send("a")
    rig.send("b")
    rig.send("slow")
    rig.send("hurried", headers={"x-llm-d-inference-ttl": "1500ms"})
    rig.send("longer", headers={"x-llm-d-inference-ttl": "1m"})  # cannot extend the configured 10 s
    rig.clock.advance(2.0)
    rig.controller.tick()
    error = rig.outcomes["hurried"]
    assert isinstance(error, RequestError) and (error.status, error.reason) == (429, "rejected-ttl-expired")
    assert "slow" not in rig.outcomes
    rig.clock.advance(8.0)
    rig.controller.tick()
    assert all(isinstance(rig.outcomes[r], RequestError) for r in ("slow", "longer"))
    assert rig.controller.waiting == 0


def test_no_endpoint_regime_answers_503_and_endpoints_restart_the_budget() -> None:
    rig = Rig("flowControl:\n  defaultRequestTTL: 10s\n  noEndpointRequestTTL: 3s\n", endpoints=0)
    rig.send("r")
    rig.controller.tick()
    rig.clock.advance(3.5)
    rig.controller.tick()
    error = rig.outcomes["r"]
    assert isinstance(error, RequestError) and (error.status, error.reason) == (503, "rejected-no-endpoints")


def test_cancelled_request_leaves_its_queue_unanswered() -> None:
    rig = Rig("flowControl: {}\n")
    rig.send("a")
    rig.send("b")
    waiting = rig.send("gone")
    rig.send("stays")
    assert waiting is not None
    waiting.cancel()  # type: ignore[attr-defined]
    assert rig.controller.waiting == 1
    rig.finish("a")
    assert rig.routed() == ["a", "b", "stays"] and "gone" not in rig.outcomes


def test_round_robin_between_flows_vs_global_strict() -> None:
    def run(fairness: str) -> list[str]:
        rig = Rig(f"flowControl:\n  defaultPriorityBand:\n    fairnessPolicyRef: {fairness}\n", per_endpoint=1)
        rig.send("first")
        for i in range(3):
            rig.send(f"heavy{i}", flow="heavy")
        rig.send("light0", flow="light")
        for rid in ["first", "heavy0", "light0", "heavy1", "heavy2"]:
            if rid in rig.routed():
                rig.finish(rid)
        return rig.routed()

    assert run("round-robin-fairness-policy")[:3] == ["first", "heavy0", "light0"]
    assert run("global-strict-fairness-policy")[:5] == ["first", "heavy0", "heavy1", "heavy2", "light0"]


def test_edf_and_slo_deadline_ordering() -> None:
    rig = Rig("flowControl:\n  defaultRequestTTL: 30s\n  defaultPriorityBand:\n    orderingPolicyRef: edf-ordering-policy\n",
              per_endpoint=1)
    rig.send("busy")
    rig.send("late")
    rig.send("soon", headers={"x-llm-d-inference-ttl": "2s"})
    rig.finish("busy")
    assert rig.routed() == ["busy", "soon"]
    slo = Rig("flowControl:\n  defaultPriorityBand:\n    orderingPolicyRef: slo-deadline-ordering-policy\n", per_endpoint=1)
    slo.send("busy")
    slo.send("none")
    slo.send("loose", headers={"x-llm-d-slo-ttft-ms": "5000"})
    slo.send("tight", headers={"x-llm-d-slo-ttft-ms": "100"})
    for rid in ("busy", "tight", "loose"):
        slo.finish(rid)
    assert slo.routed() == ["busy", "tight", "loose", "none"]


def test_soft_reflective_ceiling_gates_lower_bands_first() -> None:
    config = "flowControl:\n  usageLimitPolicyPluginRef: soft-reflective-ceiling-policy\n" \
             "  priorityBands:\n  - priority: 10\n  - priority: 0\n"
    rig = Rig(config, per_endpoint=4)
    for rid in ("a", "b", "c"):  # the third dispatch cycle ran at saturation 0.5: the low band's 1st tick
        rig.send(rid, 10)
    # saturation 0.75 is past the low band's ceiling 1 − 0.75: it opens every round(0.75/0.25) = 3rd cycle
    rig.send("low0", 0)
    assert rig.routed() == ["a", "b", "c"]  # a static limit would have let low0 through (0.75 < 1)
    rig.send("low1", 0)
    assert rig.routed() == ["a", "b", "c", "low0"]
    rig.send("d", 10)  # saturation 1.0 now: every band waits, the top one included
    assert rig.routed()[-1] == "low0"
    rig.finish("a")
    assert rig.routed()[-1] == "d"  # the top band is never gated below saturation 1


def test_program_aware_prefers_the_least_served_program() -> None:
    rig = Rig("flowControl:\n  defaultPriorityBand:\n    fairnessPolicyRef: program-aware-fairness\n", per_endpoint=1)
    rig.send("busy", flow="big")
    rig.finish("busy", Usage(5000, 1000))  # "big" has used 7000 weighted tokens
    rig.send("busy2", flow="small")
    rig.send("big1", flow="big")
    rig.send("small1", flow="small")
    rig.finish("busy2", Usage(10, 1))
    assert rig.routed()[-1] == "small1"


def test_memory_stays_bounded_under_churn() -> None:
    rig = Rig("flowControl:\n  maxRequests: 50\n", per_endpoint=1)
    rig.send("busy")
    for i in range(5000):  # clients that give up, each with its own fairness id
        waiting = rig.send(f"r{i}", flow=f"client-{i}")
        if waiting is not None:
            waiting.cancel()  # type: ignore[attr-defined]
    assert rig.controller.waiting == 0
    bands = rig.controller._ordered
    assert sum(len(b.flows) for b in bands) == 0
    assert len(rig.controller._deadlines) <= 64


def test_disabled_without_the_feature_gate() -> None:
    assert flow_control_settings(parse_config_text(HEAD.replace("featureGates: [flowControl]\n", "") + "flowControl: {}\n")) is None


def test_bad_references_name_the_field() -> None:
    from epp.config import ConfigError

    with pytest.raises(ConfigError, match=r"flowControl.priorityBands\[0\].fairnessPolicyRef"):
        flow_control_settings(parse_config_text(
            HEAD + "flowControl:\n  priorityBands:\n  - priority: 1\n    fairnessPolicyRef: fcfs-ordering-policy\n"))
    with pytest.raises(ConfigError, match="plugins"):
        flow_control_settings(parse_config_text(HEAD.replace("- type: program-aware-fairness\n",
                              "- type: program-aware-fairness\n  parameters: {strategy: drr}\n") + "flowControl: {}\n"))


def test_requests_are_parsed_with_priority_from_objectives() -> None:
    rig = Rig("flowControl: {}\n")
    request: LLMRequest = parse_request("x", {":path": "/v1/completions"}, b'{"model": "m", "prompt": "p"}')
    assert request.fairness_id == "default-flow"
    rig.director.submit(request, 10, None, lambda outcome: rig.outcomes.__setitem__("x", outcome))
    assert isinstance(rig.outcomes["x"], RoutingDecision)


def test_config_accepts_exactly_the_flow_control_policy_types() -> None:
    from epp.config import EXTERNAL_PLUGIN_TYPES
    from epp.flowcontrol.policies import FACTORIES

    assert set(FACTORIES) <= EXTERNAL_PLUGIN_TYPES  # every policy flow control builds is accepted in plugins:
