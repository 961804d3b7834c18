"""The director: candidates, subset hints, admission, in-flight accounting, rewrites, finishing once."""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence

import orjson
import pytest

from epp._util.clock import VirtualClock
from epp.datastore import Datastore, Endpoint, EndpointState
from epp.director import DESTINATION_HEADER, MODEL_NAME_HEADER, Director, ShedSheddable
from epp.discovery.rewrites import ModelRewrites, parse_rules
from epp.request import LLMRequest, RequestError
from epp.request.parse import parse_request
from epp.request.usage import Usage
from epp.plugin.typed_name import TypedName
from epp.scheduling.framework import CycleState, SchedulingResult
from epp.scheduling.plugins.pickers.max_score import MaxScorePicker
from epp.scheduling.plugins.profiles.single import SingleProfileHandler
from epp.scheduling.plugins.scorers.active_request import ActiveRequestScorer
from epp.config.presets import build_preset
from epp.scheduling.profile import SchedulerProfile, WeightedScorer
from epp.scheduling.scheduler import Scheduler
from epp.telemetry import Telemetry


def make_store(*hostports: str) -> Datastore:
    store = Datastore(VirtualClock())
    for hp in hostports:
        host, port = hp.rsplit(":", 1)
        store.upsert(Endpoint(hp, host.strip("[]"), int(port)))
    store.mark_synced()
    return store


def make_director(store: Datastore, scheduler: Scheduler | None = None, **kw: object) -> Director:
    return Director(store, scheduler or build_preset("least-inflight"), Telemetry(store), clock=store.clock,
                    rng=random.Random(1), **kw)  # type: ignore[arg-type]


def chat(model: str = "m", headers: Mapping[str, str] | None = None) -> LLMRequest:
    body = orjson.dumps({"model": model, "messages": [{"role": "user", "content": "hello there"}]})
    return parse_request("rid", {":path": "/v1/chat/completions", **(headers or {})}, body)


def sample(d: Director, name: str, labels: dict[str, str] | None = None) -> float | None:
    return d.telemetry.registry.get_sample_value(name, labels or {})


def test_route_sets_destination_model_and_inflight() -> None:
    store = make_store("10.0.0.1:8000")
    d = make_director(store)
    req = chat()
    decision = d.route(req, 100)
    assert decision.destination == "10.0.0.1:8000"
    assert decision.answer().headers == {DESTINATION_HEADER: "10.0.0.1:8000", MODEL_NAME_HEADER: "m"}
    assert decision.body is None
    state = store.get("10.0.0.1:8000")
    assert state is not None and state.inflight_requests == 1 and state.inflight_tokens == req.estimated_prompt_tokens
    d.finish(decision, Usage(5, 7, 2), 300)
    d.finish(decision, Usage(5, 7, 2), 300)  # a second finish must not double-release
    assert (state.inflight_requests, state.inflight_tokens) == (0, 0)
    labels = {"model_name": "m", "target_model_name": "m"}
    assert sample(d, "inference_objective_request_total", {**labels, "priority": "0"}) == 1
    assert sample(d, "inference_objective_input_tokens_sum", labels) == 5
    assert sample(d, "inference_objective_output_tokens_sum", labels) == 7
    assert sample(d, "inference_objective_prompt_cached_tokens_sum", labels) == 2
    assert sample(d, "inference_objective_response_sizes_sum", labels) == 300
    assert sample(d, "inference_objective_running_requests", {"model_name": "m"}) == 0
    assert sample(d, "inference_extension_scheduler_attempts_total",
                  {"status": "success", "target_model_name": "m", "pod_name": "10.0.0.1:8000", "namespace": "",
                   "port": "8000"}) == 1


def test_least_inflight_spreads_requests() -> None:
    store = make_store("10.0.0.1:8000", "10.0.0.2:8000", "10.0.0.3:8000")
    d = make_director(store)
    picked = {d.route(chat(), 10).destination for _ in range(3)}
    assert picked == {"10.0.0.1:8000", "10.0.0.2:8000", "10.0.0.3:8000"}


def test_fallback_list_from_a_multi_endpoint_picker() -> None:
    store = make_store("10.0.0.1:8000", "10.0.0.2:8000", "10.0.0.3:8000")
    store.request_started("10.0.0.1:8000", 0)
    store.request_started("10.0.0.1:8000", 0)
    store.request_started("10.0.0.2:8000", 0)
    profile = SchedulerProfile("default", MaxScorePicker(max_num_of_endpoints=3, rng=random.Random(0)),
                               scorers=[WeightedScorer(ActiveRequestScorer())])
    d = make_director(store, Scheduler({"default": profile}, SingleProfileHandler()))
    decision = d.route(chat(), 10)
    assert decision.destination == "10.0.0.3:8000,10.0.0.2:8000,10.0.0.1:8000"
    assert decision.answer().headers[DESTINATION_HEADER] == decision.destination
    assert store.get("10.0.0.3:8000").inflight_requests == 1  # only the primary is charged
    assert store.get("10.0.0.2:8000").inflight_requests == 1


def test_fallback_endpoints_extend_a_single_pick_with_the_next_best_healthy_ones() -> None:
    store = make_store("10.0.0.1:8000", "10.0.0.2:8000", "10.0.0.3:8000", "10.0.0.4:8000")
    for hp, busy in (("10.0.0.1:8000", 3), ("10.0.0.2:8000", 1), ("10.0.0.3:8000", 2)):
        for _ in range(busy):
            store.request_started(hp, 0)
    for _ in range(3):  # 10.0.0.4 (idle, the best score) is ejected: never a pick nor a fallback
        store.request_outcome(store.get("10.0.0.4:8000"), "http-503")  # type: ignore[arg-type]
    profile = SchedulerProfile("default", MaxScorePicker(rng=random.Random(0)), scorers=[WeightedScorer(ActiveRequestScorer())])
    d = make_director(store, Scheduler({"default": profile}, SingleProfileHandler()), fallbacks=2)
    decision = d.route(chat(), 10)
    assert decision.destination == "10.0.0.2:8000,10.0.0.3:8000,10.0.0.1:8000"
    assert decision.answer().headers[DESTINATION_HEADER] == decision.destination
    assert store.get("10.0.0.2:8000").inflight_requests == 2  # only the primary is charged
    with pytest.raises(ValueError, match="fallback"):
        make_director(store, fallbacks=-1)


def test_the_answer_names_the_destination_identically_in_the_header_and_envoy_lb() -> None:
    """Header and metadata come from one builder: fallbacks, scores, a generated id and a rewritten body."""
    store = make_store("10.0.0.1:8000", "10.0.0.2:8000", "10.0.0.3:8000")
    store.request_started("10.0.0.1:8000", 0)
    profile = SchedulerProfile("default", MaxScorePicker(rng=random.Random(0)), scorers=[WeightedScorer(ActiveRequestScorer())])
    d = make_director(store, Scheduler({"default": profile}, SingleProfileHandler()), fallbacks=1,
                      emit_endpoint_scores=True)
    decision = d.route(chat(), 10)
    decision.body = b'{"model":"m"}'
    answer = decision.answer("generated-id")
    lb = answer.metadata["envoy.lb"]
    assert answer.headers[DESTINATION_HEADER] == lb[DESTINATION_HEADER] == decision.destination
    assert decision.destination.count(",") == 1
    assert set(lb["x-gateway-destination-endpoint-scores"]) == {"10.0.0.1:8000", "10.0.0.2:8000", "10.0.0.3:8000"}
    assert answer.headers["x-request-id"] == "generated-id" and answer.headers["content-length"] == "13"
    assert answer.body == decision.body and answer.remove == ()
    assert list(answer.metadata) == ["envoy.lb"]


@pytest.mark.parametrize(
    ("subset", "allowed"),
    [
        (None, {"10.0.0.1:8000", "10.0.0.1:8001", "10.0.0.2:8000", "[fd00::1]:8000"}),
        (["10.0.0.1:9999"], {"10.0.0.1:8000", "10.0.0.1:8001"}),  # IP-only match: every port of the pod
        (["10.0.0.2:8000", 7, None], {"10.0.0.2:8000"}),  # non-strings ignored
        (["10.0.0.2"], {"10.0.0.2:8000"}),
        (["[fd00::1]:1234"], {"[fd00::1]:8000"}),
    ],
)
def test_subset_hint_matches_ip_only(subset: list | None, allowed: set[str]) -> None:
    store = make_store("10.0.0.1:8000", "10.0.0.1:8001", "10.0.0.2:8000", "[fd00::1]:8000")
    d = make_director(store)
    assert {s.hostport for s in d.candidates(subset)} == allowed


@pytest.mark.parametrize("subset", [[], ["10.9.9.9:8000"], [1, 2]])
def test_empty_or_unmatched_subset_is_503(subset: list) -> None:
    d = make_director(make_store("10.0.0.1:8000"))
    with pytest.raises(RequestError) as info:
        d.route(chat(), 10, subset)
    assert (info.value.status, info.value.reason) == (503, "rejected-no-endpoints")


def test_subset_filter_can_be_disabled() -> None:
    d = make_director(make_store("10.0.0.1:8000"), subset_filter=False)
    assert d.route(chat(), 10, []).destination == "10.0.0.1:8000"


def test_empty_pool_is_503() -> None:
    d = make_director(make_store())
    with pytest.raises(RequestError) as info:
        d.route(chat(), 10)
    assert (info.value.status, info.value.reason) == (503, "rejected-no-endpoints")


def test_route_any_picks_uniformly_and_500s_on_empty_pool() -> None:
    store = make_store("10.0.0.1:8000", "10.0.0.2:8000")
    d = make_director(store)
    req = LLMRequest("r", kind=parse_request("r", {":path": "/v1/models"}, b"").kind, model="")
    seen = {d.route_any(req).destination for _ in range(40)}
    assert seen == {"10.0.0.1:8000", "10.0.0.2:8000"}
    with pytest.raises(RequestError) as info:
        make_director(make_store()).route_any(req)
    assert (info.value.status, info.value.message) == (500, "no pods available in datastore")


class FixedSaturation:
    def __init__(self, saturated: bool) -> None:
        self.saturated = saturated
        self.calls: list[int] = []

    def is_saturated(self, endpoints: Sequence[EndpointState]) -> bool:
        self.calls.append(len(endpoints))
        return self.saturated


@pytest.mark.parametrize(
    ("objective", "saturated", "shed"),
    [("sheddable", True, True), ("sheddable", False, False), ("critical", True, False), (None, True, False)],
)
def test_only_negative_priority_is_shed_when_saturated(objective: str | None, saturated: bool, shed: bool) -> None:
    sat = FixedSaturation(saturated)
    d = make_director(make_store("10.0.0.1:8000"), admission=ShedSheddable(sat), objective_priority={"sheddable": -1, "critical": 10}.__getitem__)
    req = chat(headers={"x-llm-d-inference-objective": objective} if objective else None)
    if shed:
        with pytest.raises(RequestError) as info:
            d.route(req, 10)
        assert info.value.status == 429
    else:
        d.route(req, 10)
        assert req.priority == {"sheddable": -1, "critical": 10, None: 0}[objective]


def test_model_rewrite_header_rewrites_body() -> None:
    d = make_director(make_store("10.0.0.1:8000"))
    decision = d.route(chat(headers={"x-llm-d-model-name-rewrite": "m-v2"}), 10)
    assert decision.target_model == "m-v2"
    assert decision.answer().headers[MODEL_NAME_HEADER] == "m-v2"
    assert decision.body is not None and orjson.loads(decision.body)["model"] == "m-v2"


def test_rewrite_of_a_body_nested_deeper_than_json_can_be_written_is_400() -> None:
    d = make_director(make_store("10.0.0.1:8000"))
    body = b'{"model": "m", "metadata": ' + b"[" * 300 + b"]" * 300 + b"}"
    request = parse_request("rid", {":path": "/v1/chat/completions", "x-llm-d-model-name-rewrite": "m2"}, body)
    with pytest.raises(RequestError) as info:
        d.route(request, len(body))
    assert (info.value.status, info.value.code) == (400, "invalid_body")
    assert d.datastore.get("10.0.0.1:8000").inflight_requests == 0


def test_rewrite_rule_applies_without_header_and_is_counted() -> None:
    rule = {"matches": [{"model": {"value": "m"}}], "targets": [{"modelRewrite": "m-v2"}]}
    rewrites = ModelRewrites(parse_rules({"metadata": {"name": "canary"}, "spec": {"rules": [rule]}}))
    d = make_director(make_store("10.0.0.1:8000"), model_rewriter=rewrites.resolve)
    decision = d.route(chat(), 10)
    assert decision.target_model == "m-v2"
    assert decision.body is not None and orjson.loads(decision.body)["model"] == "m-v2"
    assert decision.answer().headers[MODEL_NAME_HEADER] == "m-v2"
    labels = {"model_rewrite_name": "canary", "model_name": "m", "target_model": "m-v2"}
    assert sample(d, "inference_extension_model_rewrite_decisions_total", labels) == 1
    assert d.route(chat(headers={"x-llm-d-model-name-rewrite": "hdr"}), 10).target_model == "hdr"  # header first
    assert d.route(chat("other"), 10).target_model == "other"  # no rule for it
    assert sample(d, "inference_extension_model_rewrite_decisions_total", labels) == 1


class HeaderPlugin:
    """A PreRequest plugin emitting a header (as P/D plugins do with x-prefiller-host-port)."""

    typed_name = TypedName("header-plugin", "header-plugin")

    def pre_request(self, cycle: CycleState, request: LLMRequest, result: SchedulingResult) -> None:
        assert isinstance(request.headers, dict)
        request.headers["x-prefiller-host-port"] = "10.0.0.9:8000"
        request.headers["x-gateway-destination-endpoint"] = "evil"  # system-owned: never re-emitted from here


def test_plugin_headers_are_emitted_but_system_headers_are_not() -> None:
    preset = build_preset("least-inflight")
    scheduler = Scheduler(preset.profiles, preset.handler, pre_request=[HeaderPlugin()])
    d = make_director(make_store("10.0.0.1:8000"), scheduler)
    decision = d.route(chat(headers={"x-custom": "keep-as-is"}), 10)
    assert decision.answer().headers == {
        DESTINATION_HEADER: "10.0.0.1:8000", MODEL_NAME_HEADER: "m", "x-prefiller-host-port": "10.0.0.9:8000",
    }


class Recorder:
    typed_name = TypedName("recorder", "recorder")

    def __init__(self) -> None:
        self.seen: list[tuple[str, dict[str, int]]] = []

    def response_complete(self, request: LLMRequest, endpoint: EndpointState, usage: Mapping[str, int]) -> None:
        self.seen.append((endpoint.name, dict(usage)))


def test_response_complete_plugins_hear_every_request_with_usage_when_known() -> None:
    rec = Recorder()
    preset = build_preset("least-inflight")
    d = make_director(make_store("10.0.0.1:8000"), Scheduler(preset.profiles, preset.handler, response_complete=[rec]))
    d.finish(d.route(chat(), 10), Usage(3, 4, None), 10)
    d.finish(d.route(chat(), 10))
    assert rec.seen == [("10.0.0.1:8000", {"prompt_tokens": 3, "completion_tokens": 4}), ("10.0.0.1:8000", {})]


class StartRecorder:
    typed_name = TypedName("start-recorder", "start-recorder")

    def __init__(self) -> None:
        self.seen: list[str] = []

    def response_started(self, request: LLMRequest, endpoint: EndpointState) -> None:
        self.seen.append(endpoint.name)


def test_response_started_reaches_plugins_once_and_never_after_finish() -> None:
    rec = StartRecorder()
    preset = build_preset("least-inflight")
    d = make_director(make_store("10.0.0.1:8000"), Scheduler(preset.profiles, preset.handler, plugins=[rec]))
    first = d.route(chat(), 10)
    d.response_started(first)
    d.response_started(first)
    d.finish(first)
    late = d.route(chat(), 10)
    d.finish(late)
    d.response_started(late)
    assert rec.seen == ["10.0.0.1:8000"]


def test_duration_uses_the_injected_clock() -> None:
    store = make_store("10.0.0.1:8000")
    d = make_director(store)
    decision = d.route(chat(), 10)
    store.clock.advance(2.5)  # type: ignore[attr-defined]
    d.finish(decision)
    assert sample(d, "inference_objective_request_duration_seconds_sum", {"model_name": "m",
                                                                         "target_model_name": "m"}) == 2.5


def test_reject_counts_and_logs_once_without_body(caplog: pytest.LogCaptureFixture) -> None:
    d = make_director(make_store())
    req = chat(headers={"authorization": "Bearer secret"})
    caplog.set_level("INFO", logger="epp.director")
    d.reject(RequestError(503, "no endpoints", reason="rejected-no-endpoints"), "rid", "/v1/chat/completions", req)
    assert sample(d, "inference_objective_request_error_total",
                  {"model_name": "m", "target_model_name": "m", "error_code": "ServiceUnavailable"}) == 1
    assert len(caplog.records) == 1
    line = caplog.records[0].getMessage()
    assert "rejected-no-endpoints" in line and "secret" not in line and "hello there" not in line


def test_finishing_after_the_pod_moved_leaves_the_new_pod_counters_alone() -> None:
    store = make_store("10.0.0.1:8000")
    d = make_director(store)
    old = d.route(chat(), 10)
    store.upsert(Endpoint("10.0.0.1:8000", "10.0.0.9", 8000))  # same name, new address: a new endpoint
    new = d.route(chat(), 10)
    d.finish(old)
    state = store.get("10.0.0.1:8000")
    assert state is not None and state.inflight_requests == 1 and state.inflight_tokens == new.tokens
    d.finish(new)
    assert (state.inflight_requests, state.inflight_tokens) == (0, 0)


def test_a_failing_response_complete_plugin_neither_raises_nor_keeps_the_request_in_flight() -> None:
    class Broken:
        typed_name = TypedName("broken", "broken")

        def response_complete(self, request: LLMRequest, endpoint: EndpointState, usage: Mapping[str, int]) -> None:
            raise RuntimeError("boom")

    store = make_store("10.0.0.1:8000")
    scheduler = build_preset("least-inflight")
    scheduler.response_complete_plugins.insert(0, Broken())
    d = make_director(store, scheduler)
    decision = d.route(chat(), 10)
    d.finish(decision, Usage(5, 7, 0), 100)
    state = store.get("10.0.0.1:8000")
    assert state is not None and state.inflight_requests == 0


def test_data_parallel_primary_port_is_the_destination_and_the_rank_stays_accounted() -> None:
    """llm-d's data-parallel-profile-handler: Envoy is sent to the pod's primary port (every pick, fallbacks
    too), the sidecar there reads the picked rank from x-data-parallel-host-port; in-flight stays on the rank."""
    from epp.config import load_scheduler_text

    scheduler = load_scheduler_text("""apiVersion: llm-d.ai/v1alpha1
kind: EndpointPickerConfig
plugins:
- {type: queue-scorer}
- {type: max-score-picker, parameters: {maxNumOfEndpoints: 2}}
- {type: data-parallel-profile-handler, parameters: {primaryPort: 8000}}
schedulingProfiles:
- {name: default, plugins: [{pluginRef: queue-scorer}, {pluginRef: max-score-picker}]}
""")
    store = make_store("10.0.0.1:8001", "[fd00::2]:8002")
    d = make_director(store, scheduler)
    req = chat()
    decision = d.route(req, 100)
    ranks = [e.hostport for e in decision.endpoints]
    assert sorted(ranks) == ["10.0.0.1:8001", "[fd00::2]:8002"]
    primary = {"10.0.0.1:8001": "10.0.0.1:8000", "[fd00::2]:8002": "[fd00::2]:8000"}
    assert decision.answer().headers[DESTINATION_HEADER] == ",".join(primary[r] for r in ranks)
    assert decision.answer().headers["x-data-parallel-host-port"] == ranks[0]
    state = store.get(decision.endpoints[0].name)
    assert state is not None and state.inflight_requests == 1
