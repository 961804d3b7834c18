"""GIE's conformance picker setup through a real Envoy: the test header picks the endpoint, and the
endpoint Envoy reports as served comes back in ``x-conformance-test-served-endpoint``."""

from __future__ import annotations

from tests.e2e.harness import Stack, chat, logged, post

SELECTION_HEADER = "test-epp-endpoint-selection"
SERVED_HEADER = "x-conformance-test-served-endpoint"


async def test_served_endpoint_is_the_one_the_test_asked_for(stack: Stack) -> None:
    envoy = stack.envoy("conformance")
    replies = []
    for name in ("b", "c", "a"):
        wanted = stack.engines.members[name].hostport
        reply = await post(envoy, chat(), headers={SELECTION_HEADER: wanted})
        assert reply.status == 200, reply.body
        assert reply.json()["engine"]["name"] == name
        assert reply.headers[SERVED_HEADER] == wanted
        replies.append(reply)
    entries = logged(envoy, [r.request_id for r in replies])
    assert [entries[r.request_id].upstream for r in replies] == [r.headers[SERVED_HEADER] for r in replies]


async def test_no_selection_header_means_no_endpoint(stack: Stack) -> None:
    reply = await post(stack.envoy("conformance"), chat())
    assert reply.status == 429
    assert SERVED_HEADER not in reply.headers


async def test_original_dst_gateway_reports_no_served_endpoint(stack: Stack) -> None:
    """ORIGINAL_DST makes no load-balancing choice, so Envoy has nothing to report: the verifier says so."""
    wanted = stack.engines.members["a"].hostport
    reply = await post(stack.envoy("conformance-original-dst"), chat(), headers={SELECTION_HEADER: wanted})
    assert reply.status == 200, reply.body
    assert reply.json()["engine"]["name"] == "a"
    assert reply.headers[SERVED_HEADER] == "fail: missing envoy lb metadata"
