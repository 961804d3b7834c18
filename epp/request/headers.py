"""HTTP header and metadata names of the picker protocol (gie-facts A3/A4), defined once.

The picker, the body-based router, the Envoy config builder and the plugins all read these names; a
typo in one copy would silently break routing, so every module imports them from here.
"""

from __future__ import annotations

from typing import Any, Final

REQUEST_ID_HEADER: Final = "x-request-id"
# Where the request goes: the header and the dynamic metadata carry the same value.
DESTINATION_HEADER: Final = "x-gateway-destination-endpoint"
LB_METADATA_NAMESPACE: Final = "envoy.lb"
# envoy.lb key of every scored endpoint's total score, with --emit-endpoint-scores (llm-d-router)
SCORES_KEY: Final = "x-gateway-destination-endpoint-scores"
# The endpoint that actually served the request, reported by the gateway in the response phase (same namespace).
SERVED_KEY: Final = "x-gateway-destination-endpoint-served"
# The gateway's endpoint subset hint: metadata namespace and key.
SUBSET_NAMESPACE: Final = "envoy.lb.subset_hint"
SUBSET_KEY: Final = "x-gateway-destination-endpoint-subset"
MODEL_NAME_HEADER: Final = "x-gateway-model-name"
DROPPED_REASON_HEADER: Final = "x-llm-d-request-dropped-reason"
SESSION_TOKEN_HEADER: Final = "x-session-token"
# Current llm-d header first, then the GIE alias it replaced (gie-facts A4).
OBJECTIVE_HEADERS: Final = ("x-llm-d-inference-objective", "x-gateway-inference-objective")
FAIRNESS_HEADERS: Final = ("x-llm-d-inference-fairness-id", "x-gateway-inference-fairness-id")
MODEL_REWRITE_HEADERS: Final = ("x-llm-d-model-name-rewrite", "x-gateway-model-name-rewrite")
# Disaggregation (llm-d pkg/common/routing): where the routing sidecar on the decode pod sends the prefill
# (``ip:port``) and the encoders (comma-separated ``ip:port`` list). The picker writes the current name and
# the pre-rename alias with the same value; the sidecar trusts the alias first.
PREFILL_HEADERS: Final = ("x-llm-d-prefiller-host-port", "x-prefiller-host-port")
ENCODER_HEADERS: Final = ("x-llm-d-encoder-hosts-ports", "x-encoder-hosts-ports")
DATA_PARALLEL_HEADER: Final = "x-data-parallel-host-port"


def prefill_target(role: str, headers: Any) -> str | None:
    """The prefill engine's ``host:port`` a request reaching an engine of ``role`` asks for (what llm-d's
    routing sidecar reads; the simulator and offline replay act on it), None when it runs aggregated."""
    if role in ("prefill", "encode"):
        return None
    for name in reversed(PREFILL_HEADERS):  # the pre-rename alias first, as the sidecar trusts it
        value = headers.get(name)
        if value:
            return str(value).strip()
    return None
