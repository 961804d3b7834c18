"""disagg-profile-handler with llm-d's deciders: decode first and primary, prefill/encode only when the
decider approves, the sidecar headers (both spellings, forged ones dropped), the peer endpoint for
topology plugins, and the parameter forms upstream configs use."""

from __future__ import annotations


import pytest

from epp.config import ConfigError, load_scheduler_text
from epp.request import LLMRequest, RequestKind
from epp.scheduling.framework import CycleState
from epp.scheduling.plugins.datalayer.topology import PEER_ENDPOINT
from epp.scheduling.plugins.profiles.disagg import DisaggProfileHandler
from epp.scheduling.scheduler import Scheduler
from tests.conftest import make_state

HEAD = "apiVersion: llm-d.ai/v1alpha1\nkind: EndpointPickerConfig\n"
PROFILES = """schedulingProfiles:
- name: prefill
  plugins: [{pluginRef: prefill-filter}, {pluginRef: prefix-cache-scorer}]
- name: decode
  plugins: [{pluginRef: decode-filter}, {pluginRef: prefix-cache-scorer}]
"""


def config(decider: str) -> Scheduler:
    return load_scheduler_text(HEAD + f"""plugins:
- type: approx-prefix-cache-producer
  parameters: {{blockSizeTokens: 4, autoTune: false}}
- type: prefix-cache-scorer
- type: prefill-filter
- type: decode-filter
- type: disagg-profile-handler
  parameters: {{deciders: {{prefill: {decider.split()[0]}}}}}
- type: {decider.split()[0]}
{"  parameters: {nonCachedTokens: " + decider.split()[1] + "}" if " " in decider else ""}
""" + PROFILES)


POOL = [make_state("p1", address="10.0.1.1", labels={"llm-d.ai/role": "prefill"}),
        make_state("d1", address="10.0.2.1", labels={"llm-d.ai/role": "decode"}),
        make_state("b1", address="10.0.3.1")]  # unlabelled = both: decodes


def request(prompt: bytes, headers: dict[str, str] | None = None) -> LLMRequest:
    return LLMRequest("r", RequestKind.COMPLETIONS, "m", prompt_bytes=prompt, headers=headers or {})


def test_always_decider_picks_prefill_and_decode_and_writes_both_header_spellings() -> None:
    sched = config("always-disagg-pd-decider")
    req = request(b"x" * 400, {"x-prefiller-host-port": "6.6.6.6:1", "x-llm-d-encoder-hosts-ports": "6.6.6.6:2"})
    result = sched.schedule(req, POOL)
    assert result.primary_profile == "decode"
    assert result.endpoints[0].name in ("d1", "b1")
    assert result.profile_results["prefill"].endpoints[0].name == "p1"
    assert req.headers["x-llm-d-prefiller-host-port"] == req.headers["x-prefiller-host-port"] == "10.0.1.1:8000"
    assert "x-llm-d-encoder-hosts-ports" not in req.headers  # forged value dropped, no encode stage ran


def test_prefix_decider_disaggregates_only_a_long_uncached_prompt() -> None:
    sched = config("prefix-based-pd-decider 16")
    short = request(b"y" * 40)  # 10 tokens < 16
    assert "prefill" not in sched.schedule(short, POOL).profile_results
    assert "x-prefiller-host-port" not in short.headers
    long = b"z" * 400  # 100 tokens, nothing cached yet
    first = request(long)
    result = sched.schedule(first, POOL)
    assert result.profile_results["prefill"].endpoints[0].name == "p1"
    decode = result.endpoints[0].name
    # The decode endpoint now holds the prompt: the same prompt plus a short suffix stays aggregated.
    again = request(long + b"q" * 20)
    result = sched.schedule(again, POOL)
    assert result.endpoints[0].name == decode
    assert "prefill" not in result.profile_results and "x-prefiller-host-port" not in again.headers
    # nonCachedTokens 0 disables the decider altogether.
    assert "prefill" not in config("prefix-based-pd-decider 0").schedule(request(long), POOL).profile_results


def test_no_prefill_endpoint_still_routes_to_decode() -> None:
    result = config("always-disagg-pd-decider").schedule(request(b"x" * 400), POOL[1:])
    assert result.endpoints and "prefill" not in result.profile_results


def test_peer_endpoint_is_the_decode_pick_when_prefill_runs() -> None:
    sched = config("always-disagg-pd-decider")
    cycle = CycleState()
    result = sched.schedule(request(b"x" * 400), POOL, cycle)
    assert cycle[PEER_ENDPOINT] is result.endpoints[0]


def test_encode_stage_runs_for_multimodal_requests_only() -> None:
    sched = load_scheduler_text(HEAD + """plugins:
- {type: encode-filter}
- {type: decode-filter}
- {type: always-disagg-multimodal-decider}
- {type: disagg-profile-handler, parameters: {deciders: {encode: always-disagg-multimodal-decider}}}
schedulingProfiles:
- {name: encode, plugins: [{pluginRef: encode-filter}]}
- {name: decode, plugins: [{pluginRef: decode-filter}]}
""")
    pool = [*POOL, make_state("e1", address="10.0.4.1", labels={"llm-d.ai/role": "encode"})]
    image = {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "http://i/1.png"}}]}]}
    mm = LLMRequest("r", RequestKind.CHAT_COMPLETIONS, "m", prompt_bytes=b"{}", body=image)
    result = sched.schedule(mm, pool)
    assert result.profile_results["encode"].endpoints[0].name == "e1"
    assert mm.headers["x-encoder-hosts-ports"] == mm.headers["x-llm-d-encoder-hosts-ports"] == "10.0.4.1:8000"
    text = request(b"hi")
    assert "encode" not in sched.schedule(text, pool).profile_results


def test_legacy_and_deprecated_forms_load() -> None:
    legacy = load_scheduler_text(HEAD + """plugins:
- {type: disagg-headers-handler}
- {type: always-disagg-pd-decider}
- {type: disagg-profile-handler, parameters: {deciderPluginName: always-disagg-pd-decider}}
- {type: prefill-filter}
- {type: decode-filter}
- {type: prefix-cache-scorer}
""" + PROFILES)
    assert isinstance(legacy.handler, DisaggProfileHandler) and legacy.handler.prefill_decider is not None
    pd = load_scheduler_text(HEAD + """plugins:
- {type: prefix-based-pd-decider, parameters: {nonCachedTokens: 8}}
- {type: pd-profile-handler, parameters: {prefixPluginType: prefix-cache-scorer}}
- {type: prefill-filter}
- {type: decode-filter}
- {type: prefix-cache-scorer}
""" + PROFILES)
    assert pd.handler.prefill_decider is not None  # deciderPluginName defaults to prefix-based-pd-decider


@pytest.mark.parametrize(("params", "where"), [
    ("{deciders: {prefill: nope}}", "deciders.prefill"),
    ("{deciders: {prefill: decode-filter}}", "deciders.prefill"),
    ("{deciderPluginName: x, deciders: {prefill: x}}", "deciderPluginName"),
    ("{bogus: 1}", "bogus"),
])
def test_bad_parameters_name_the_field(params: str, where: str) -> None:
    with pytest.raises(ConfigError, match=where.replace(".", r"\.")):
        load_scheduler_text(HEAD + f"plugins:\n- {{type: decode-filter}}\n- {{type: disagg-profile-handler, parameters: {params}}}\n"
                            "schedulingProfiles:\n- {name: decode, plugins: [{pluginRef: decode-filter}]}\n")


def data_parallel(params: str) -> Scheduler:
    return load_scheduler_text(HEAD + f"""plugins:
- {{type: decode-filter}}
- {{type: data-parallel-profile-handler{params}}}
schedulingProfiles:
- {{name: default, plugins: [{{pluginRef: decode-filter}}]}}
""")


def test_data_parallel_handler_writes_the_rank_and_sends_to_the_primary_port() -> None:
    req = request(b"x")
    result = data_parallel(", parameters: {primaryPort: 9000}").schedule(
        req, [make_state("d1", address="10.0.2.1", port=8001)])
    assert req.headers["x-data-parallel-host-port"] == "10.0.2.1:8001" and result.endpoints[0].name == "d1"
    assert result.port == 9000


@pytest.mark.parametrize(("params", "port"), [("", 8000), (", parameters: {primaryPort: 0}", None)])
def test_data_parallel_primary_port_defaults_to_8000_and_0_keeps_the_rank_port(params: str, port: int | None) -> None:
    assert data_parallel(params).schedule(request(b"x"), [make_state("d1", port=8001)]).port == port


def test_data_parallel_primary_port_out_of_range_names_the_field() -> None:
    with pytest.raises(ConfigError, match="primaryPort"):
        data_parallel(", parameters: {primaryPort: 70000}")


def test_decisions_are_counted_as_llm_d_counts_them() -> None:
    from prometheus_client import generate_latest

    from epp.telemetry import Telemetry

    sched = config("prefix-based-pd-decider 16")
    telemetry = Telemetry()
    telemetry.instrument(sched)
    sched.schedule(request(b"x" * 400), POOL)
    sched.schedule(request(b"y" * 8), POOL)
    text = generate_latest(telemetry.registry).decode()
    assert 'llm_d_inference_scheduler_disagg_decision_total{decision_type="prefill-decode",model_name="m"} 1.0' in text
    assert 'llm_d_inference_scheduler_disagg_decision_total{decision_type="decode-only",model_name="m"} 1.0' in text
