"""Profile handlers beyond single-profile-handler, built from the upstream README configs."""

from __future__ import annotations

import pytest

from epp.config import build_scheduler, parse_config_text
from epp.request import RequestError
from tests.conftest import make_request, make_state

EPD = """
apiVersion: llm-d.ai/v1alpha1
kind: EndpointPickerConfig
plugins:
- type: encode-filter
- type: prefill-filter
- type: decode-filter
- type: header-profile-handler
  HANDLER_PARAMS
schedulingProfiles:
- name: encode
  plugins:
  - pluginRef: encode-filter
- name: prefill
  plugins:
  - pluginRef: prefill-filter
- name: decode
  plugins:
  - pluginRef: decode-filter
"""


def epd_scheduler(params: str = ""):  # type: ignore[no-untyped-def]
    return build_scheduler(parse_config_text(EPD.replace("HANDLER_PARAMS", params)))


ENDPOINTS = [make_state(role, labels={"llm-d.ai/role": role}) for role in ("encode", "prefill", "decode")]


@pytest.mark.parametrize("value", ["encode", "prefill", "decode", " prefill "])
def test_header_names_the_one_profile_that_runs(value: str) -> None:
    result = epd_scheduler().schedule(make_request(headers={"epp-profile": value}), ENDPOINTS)
    assert list(result.profile_results) == [value.strip()]
    assert result.primary_profile == value.strip()
    assert [e.name for e in result.endpoints] == [value.strip()]


def test_missing_or_blank_header_runs_the_default_profile() -> None:
    for headers in ({}, {"epp-profile": "  "}):
        assert [e.name for e in epd_scheduler().schedule(make_request(headers=headers), ENDPOINTS).endpoints] == ["decode"]
    scheduler = epd_scheduler("parameters: {defaultProfile: prefill, headerName: X-Stage}")
    assert [e.name for e in scheduler.schedule(make_request(), ENDPOINTS).endpoints] == ["prefill"]
    # headerName is matched case-insensitively: the gateway's header keys arrive lower-cased
    assert [e.name for e in scheduler.schedule(make_request(headers={"x-stage": "encode"}), ENDPOINTS).endpoints] == ["encode"]


def test_unknown_value_is_a_client_error_and_a_missing_default_a_config_error() -> None:
    with pytest.raises(RequestError) as caught:
        epd_scheduler().schedule(make_request(headers={"epp-profile": "Prefill"}), ENDPOINTS)
    assert caught.value.status == 400 and "'Prefill'" in str(caught.value)
    with pytest.raises(RequestError) as caught:
        epd_scheduler("parameters: {defaultProfile: nope}").schedule(make_request(), ENDPOINTS)
    assert caught.value.status == 503 and "'nope'" in str(caught.value)


def test_a_lone_profile_always_runs_whatever_the_header() -> None:
    text = EPD.replace("HANDLER_PARAMS", "").split("- name: prefill")[0]
    result = build_scheduler(parse_config_text(text)).schedule(make_request(headers={"epp-profile": "decode"}), ENDPOINTS)
    assert result.primary_profile == "encode" and [e.name for e in result.endpoints] == ["encode"]


def test_through_the_ext_proc_stream_the_header_routes_and_a_bad_value_is_a_400() -> None:
    from epp.datastore import Endpoint
    from epp.extproc.stream import RequestStream
    from tests.extproc.builders import CHAT_BODY, immediate, make_director, metadata_destination, request_body, request_headers

    pool = {"10.0.0.1:8000": "encode", "10.0.0.2:8000": "prefill", "10.0.0.3:8000": "decode"}
    director = make_director(*pool, config=EPD.replace("HANDLER_PARAMS", ""))
    for hostport, role in pool.items():  # the pods' role labels, as discovery reports them
        host, port = hostport.split(":")
        director.datastore.upsert(Endpoint(hostport, host, int(port), labels={"llm-d.ai/role": role}))

    def send(extra: dict[str, str]):  # type: ignore[no-untyped-def]
        stream = RequestStream(director)
        return [r for m in (request_headers(extra=extra), request_body(CHAT_BODY, eos=True)) for r in stream.handle(m)]

    by_role = {role: hp for hp, role in pool.items()}
    assert metadata_destination(send({"EPP-Profile": "prefill"})[0]) == by_role["prefill"]
    assert metadata_destination(send({})[0]) == by_role["decode"]
    status, _, error = immediate(send({"epp-profile": "verify"})[0])
    assert status == 400 and "'verify'" in error["error"]["message"]
