"""``destination-endpoint-served-verifier`` (GIE conformance): echo the endpoint that served the request.

The gateway conformance test ``GatewayDestinationEndpointServed`` checks that the data plane reports,
in the response phase, which endpoint served each request (EPP protocol: ``metadata_context``
namespace ``envoy.lb``, key ``x-gateway-destination-endpoint-served``). This plugin turns that report
into the response header ``x-conformance-test-served-endpoint`` so the test client can compare it
with the pod it asked for. Missing reports become the reference's failure strings, never an error:

* no ``envoy.lb`` namespace → ``fail: missing envoy lb metadata``;
* namespace without a string ``x-gateway-destination-endpoint-served`` →
  ``fail: missing destination endpoint served metadata``.

Envoy produces the report with the ``override_host`` load-balancing policy's ``selected_host_key``
plus ext_proc ``forwarding_namespaces: [envoy.lb]`` (see ``epp.envoy.config``); an ``ORIGINAL_DST``
cluster makes no load-balancing choice and therefore never reports one.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

from epp.datastore import EndpointState
from epp.request import LLMRequest
from epp.request.headers import LB_METADATA_NAMESPACE, SERVED_KEY
from epp.plugin.typed_name import TypedName
from epp.plugin.params import NoParams, decode_params
from epp.plugin.registry import PluginHandle

DESTINATION_ENDPOINT_SERVED_VERIFIER: Final = "destination-endpoint-served-verifier"
RESULT_HEADER: Final = "x-conformance-test-served-endpoint"
MISSING_NAMESPACE: Final = "fail: missing envoy lb metadata"
MISSING_SERVED: Final = "fail: missing destination endpoint served metadata"


class DestinationEndpointServedVerifier:
    """ResponseReceived plugin; stateless, so one instance serves every request."""

    def __init__(self, name: str = DESTINATION_ENDPOINT_SERVED_VERIFIER) -> None:
        self.typed_name = TypedName(DESTINATION_ENDPOINT_SERVED_VERIFIER, name)

    def response_received(
        self, request: LLMRequest, endpoint: EndpointState, metadata: Mapping[str, Any]
    ) -> Mapping[str, str]:
        lb = metadata.get(LB_METADATA_NAMESPACE)
        if not isinstance(lb, Mapping):
            return {RESULT_HEADER: MISSING_NAMESPACE}
        served = lb.get(SERVED_KEY)
        if not isinstance(served, str):
            return {RESULT_HEADER: MISSING_SERVED}
        return {RESULT_HEADER: served}


def factory(name: str, params: Mapping[str, Any], handle: PluginHandle) -> DestinationEndpointServedVerifier:
    decode_params(NoParams, params)
    return DestinationEndpointServedVerifier(name)
