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
