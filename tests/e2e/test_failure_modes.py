"""What clients see when epp is unreachable: fail closed by default; a real fail-open needs override_host
routing (a fallback policy) and, in Envoy 1.40, a request body mode other than FULL_DUPLEX_STREAMED."""

from __future__ import annotations

import aiohttp

from tests.e2e.harness import Stack, chat, logged, post


async def test_epp_down_fails_closed(stack: Stack) -> None:
    envoy = stack.envoy("down-fail-closed")
    reply = await post(envoy, chat())
    assert reply.status == 500
    entry = logged(envoy, [reply.request_id])[reply.request_id]
    assert entry.upstream is None
    assert entry.details is not None and entry.details.startswith("ext_proc_error_gRPC_error_14")


async def test_epp_down_fails_open_with_override_host_fallback(stack: Stack) -> None:
    envoy = stack.envoy("down-fail-open")
    replies = [await post(envoy, chat(content=f"q{i}")) for i in range(4)]
    assert [r.status for r in replies] == [200] * 4
    served = {r.json()["engine"]["name"] for r in replies}
    assert len(served) > 1  # round-robin fallback over the pool members
    entries = logged(envoy, [r.request_id for r in replies])
    assert all(e.destination is None and e.metadata is None for e in entries.values())
    assert envoy.stats("ext_proc.failure_mode_allowed")["http.ingress.ext_proc.failure_mode_allowed"] >= 4


async def test_duplex_fail_open_only_covers_body_less_requests(stack: Stack) -> None:
    """Envoy fails open in FULL_DUPLEX_STREAMED only until the first body chunk was handed to ext_proc
    (envoyproxy/envoy#41276): a POST still gets 500 while a GET falls back to round robin. If a future Envoy
    changes this, this test tells us the duplex reference mode can fail open after all."""
    envoy = stack.envoy("down-fail-open-duplex")
    assert (await post(envoy, chat())).status == 500
    async with aiohttp.ClientSession() as session, session.get(envoy.url + "/v1/models") as reply:
        assert reply.status == 200
        assert (await reply.json())["data"][0]["owned_by"] in stack.engines.members


async def test_fail_open_never_lets_the_client_pick_the_upstream(stack: Stack) -> None:
    """ORIGINAL_DST has no fallback: with epp down the request fails (503) even though the client named an
    engine, because the gateway strips client-sent destination headers before ext_proc."""
    envoy = stack.envoy("down-fail-open-original-dst")
    target = stack.engines.members["a"].hostport
    reply = await post(envoy, chat(), headers={"x-gateway-destination-endpoint": target})
    assert reply.status == 503
    assert logged(envoy, [reply.request_id])[reply.request_id].upstream is None
