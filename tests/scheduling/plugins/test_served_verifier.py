"""destination-endpoint-served-verifier: the gateway's served-endpoint report, or the reference's failure text."""

from __future__ import annotations

import pytest

from epp.config import load_scheduler_text
from epp.scheduling.plugins.response.served_verifier import (
    MISSING_NAMESPACE,
    MISSING_SERVED,
    RESULT_HEADER,
    DestinationEndpointServedVerifier,
)
from tests.conftest import make_request, make_state

CONFORMANCE_CONFIG = """
apiVersion: inference.networking.x-k8s.io/v1alpha1
kind: EndpointPickerConfig
plugins:
- {type: header-based-testing-filter}
- {type: destination-endpoint-served-verifier}
- {type: max-score-picker}
schedulingProfiles:
- name: conformance
  plugins:
  - {pluginRef: header-based-testing-filter}
  - {pluginRef: max-score-picker}
"""


@pytest.mark.parametrize(
    ("metadata", "expected"),
    [
        ({"envoy.lb": {"x-gateway-destination-endpoint-served": "10.0.0.7:3000"}}, "10.0.0.7:3000"),
        ({"envoy.lb": {"x-gateway-destination-endpoint-served": 3000.0}}, MISSING_SERVED),
        ({"envoy.lb": {}}, MISSING_SERVED),
        ({"envoy.lb": "10.0.0.7:3000"}, MISSING_NAMESPACE),
        ({}, MISSING_NAMESPACE),
    ],
)
def test_header_value(metadata: dict[str, object], expected: str) -> None:
    verifier = DestinationEndpointServedVerifier()
    assert verifier.response_received(make_request(), make_state("e0"), metadata) == {RESULT_HEADER: expected}


def test_conformance_config_wires_the_verifier_into_response_headers() -> None:
    scheduler = load_scheduler_text(CONFORMANCE_CONFIG)
    assert scheduler.wants_response_metadata
    served = {"envoy.lb": {"x-gateway-destination-endpoint-served": "10.0.0.7:3000"}}
    assert scheduler.response_headers(make_request(), make_state("e0"), served) == {RESULT_HEADER: "10.0.0.7:3000"}
    assert scheduler.response_headers(make_request(), make_state("e0")) == {RESULT_HEADER: MISSING_NAMESPACE}
