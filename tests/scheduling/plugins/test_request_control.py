"""agent-identity and request-attribute-reporter: the fairness flow of an agent session, and the CEL
cost metadata reaching the gateway on the response's end-of-stream answer through the real ext_proc
state machine."""

from __future__ import annotations

import orjson
import pytest
from google.protobuf import json_format

from epp.config import ConfigError, load_scheduler_text
from epp.extproc.stream import RequestStream
from epp.scheduling.plugins.requestcontrol.agent_identity import AgentIdentity, AgentIdentityParams
from epp.scheduling.plugins.requestcontrol.request_attribute_reporter import RequestAttributeReporter, ReporterParams
from tests.conftest import make_request, make_state
from tests.extproc.builders import make_director, request_body, request_headers, response_body, response_headers
from tests.extproc.test_stream import run

HEAD = "apiVersion: llm-d.ai/v1alpha1\nkind: EndpointPickerConfig\nplugins:\n"
COST = ("- name: cost\n  type: request-attribute-reporter\n  parameters:\n    attributes:\n"
        "    - key: {namespace: envoy.lb, name: x-gateway-inference-request-cost}\n"
        "      expression: |\n        usage.prompt_tokens + usage.completion_tokens\n"
        "      condition: has(usage.prompt_tokens) && has(usage.completion_tokens)\n")


@pytest.mark.parametrize(("headers", "fairness"), [
    ({"x-claude-code-session-id": "cc-1"}, "cc-1"),
    ({"session_id": "codex-old", "session-id": "codex"}, "codex"),
    ({"x-my-agent": "mine", "x-session-affinity": "oc"}, "mine"),
    ({"x-session-affinity": "oc", "x-llm-d-inference-fairness-id": "explicit"}, "explicit"),
    ({}, "default-flow"),
])
def test_agent_identity_sets_the_fairness_flow_unless_explicit(headers: dict[str, str], fairness: str) -> None:
    plugin = AgentIdentity(params=AgentIdentityParams(additional_session_headers=["X-My-Agent"]))
    explicit = headers.get("x-llm-d-inference-fairness-id")
    request = make_request(headers=headers, fairness_id=explicit or "default-flow")
    plugin.process_request(request)
    assert request.fairness_id == fairness


def test_agent_identity_runs_on_the_directors_request_path() -> None:
    director = make_director("10.0.0.1:8000", config=HEAD + "- type: agent-identity\n- type: random-picker\n")
    s = RequestStream(director)
    body = orjson.dumps({"model": "m", "prompt": "hi"})
    run(s, [request_headers("/v1/completions", extra={"x-claude-code-session-id": "sess-9"}), request_body(body, eos=True)])
    assert s.decision.request.fairness_id == "sess-9"


def test_reporter_evaluates_condition_and_expression() -> None:
    plugin = next(p for p in load_scheduler_text(HEAD + COST + "- type: random-picker\n").plugins
                  if isinstance(p, RequestAttributeReporter))
    endpoint = make_state("e")
    req = make_request()
    got = plugin.response_metadata(req, endpoint, {"prompt_tokens": 12, "completion_tokens": 30})
    assert got == {"envoy.lb": {"x-gateway-inference-request-cost": 42}}
    assert plugin.response_metadata(req, endpoint, {"prompt_tokens": 12}) == {}  # condition false
    unguarded = RequestAttributeReporter("r", ReporterParams([{"key": {"name": "c"}, "expression": "usage.completion_tokens"}]))
    assert unguarded.response_metadata(req, endpoint, {}) == {}  # evaluation error: left out, logged once
    assert unguarded.response_metadata(req, endpoint, {"completion_tokens": 3}) == {"envoy.lb": {"c": 3}}
    text = RequestAttributeReporter("r", ReporterParams([{"key": {"name": "c"}, "expression": "'three'"}]))
    assert text.response_metadata(req, endpoint, {}) == {}


@pytest.mark.parametrize(("attribute", "where"), [
    ("{key: {name: c}, expression: 'usage.('}", "attributes[0].expression"),
    ("{key: {namespace: x}, expression: '1'}", "attributes[0].key.name"),
    ("{key: {name: c}, expression: '1', cost: 2}", "attributes[0].cost"),
])
def test_reporter_rejects_bad_attributes_at_start(attribute: str, where: str) -> None:
    with pytest.raises(ConfigError, match=where.replace("[", r"\[").replace("]", r"\]")):
        load_scheduler_text(HEAD + f"- type: request-attribute-reporter\n  parameters: {{attributes: [{attribute}]}}\n")


def test_cost_metadata_rides_on_the_end_of_stream_answer_and_profiles_may_list_the_reporter() -> None:
    config = HEAD + COST + "- type: random-picker\nschedulingProfiles:\n- name: default\n  plugins:\n" \
        "  - pluginRef: cost\n  - pluginRef: random-picker\n"
    director = make_director("10.0.0.1:8000", config=config)
    s = RequestStream(director)
    run(s, [request_headers("/v1/completions"), request_body(orjson.dumps({"model": "m", "prompt": "hi"}), eos=True)])
    s.handle(response_headers())
    payload = b'{"id":"1","model":"m","usage":{"prompt_tokens":12,"completion_tokens":30}}'
    first = s.handle(response_body(payload[:20]))
    assert not first[-1].HasField("dynamic_metadata")
    last = s.handle(response_body(payload[20:], eos=True))
    metadata = json_format.MessageToDict(last[-1].dynamic_metadata)
    assert metadata == {"envoy.lb": {"x-gateway-inference-request-cost": 42.0}}
