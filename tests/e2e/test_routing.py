"""Requests go where epp says, through a real Envoy, in every supported processing and routing mode."""

from __future__ import annotations

import asyncio
import hashlib

import aiohttp
import orjson
import pytest

from tests.e2e.harness import Reply, Stack, chat, logged, post

BIG_BODY_BYTES = 220 * 1024


def assert_routed_as_picked(stack: Stack, variant: str, replies: list[Reply]) -> None:
    """The engine that answered is the one epp named, in the header it received and in Envoy's log."""
    entries = logged(stack.envoy(variant), [r.request_id for r in replies])
    for reply in replies:
        assert reply.status == 200, reply.body
        engine = reply.json()["engine"]
        served = f"127.0.0.1:{engine['port']}"
        assert stack.engines.name_of(served) == engine["name"]
        assert engine["headers"]["x-gateway-destination-endpoint"] == served
        entry = entries[reply.request_id]
        assert (entry.upstream, entry.destination, entry.metadata) == (served, served, served)
        assert entry.attempts == 1


@pytest.mark.parametrize("variant", ["duplex", "buffered", "tls", "override-host", "subset-match", "no-response-phase"])
async def test_every_request_reaches_the_endpoint_epp_picked(stack: Stack, variant: str) -> None:
    envoy = stack.envoy(variant)
    replies = await asyncio.gather(*(post(envoy, chat(content=f"question {i}")) for i in range(9)))
    assert_routed_as_picked(stack, variant, list(replies))
    # concurrent requests: each pick is booked at once, so more than one engine gets work
    assert len({r.json()["engine"]["name"] for r in replies}) > 1


async def test_model_header_and_completions_path_reach_the_engine(stack: Stack) -> None:
    reply = await post(stack.envoy("duplex"), {"model": "tiny-llm", "prompt": "once upon"}, path="/v1/completions")
    assert reply.status == 200, reply.body
    data = reply.json()
    assert data["object"] == "text_completion"
    assert data["engine"]["headers"]["x-gateway-model-name"] == "tiny-llm"
    assert data["usage"]["completion_tokens"] == 4


async def test_client_cannot_choose_the_destination(stack: Stack) -> None:
    envoy = stack.envoy("duplex")
    target = stack.engines.members["c"].hostport
    replies = [await post(envoy, chat(), headers={"x-gateway-destination-endpoint": target}) for _ in range(4)]
    assert_routed_as_picked(stack, "duplex", replies)


@pytest.mark.parametrize("variant", ["duplex", "buffered"])
async def test_a_220kb_body_arrives_intact(stack: Stack, variant: str) -> None:
    payload = chat(content="x" * BIG_BODY_BYTES)
    body = orjson.dumps(payload)
    reply = await post(stack.envoy(variant), body)
    assert_routed_as_picked(stack, variant, [reply])
    engine = reply.json()["engine"]
    assert engine["body_bytes"] == len(body)
    assert engine["body_sha256"] == hashlib.sha256(body).hexdigest()


async def test_body_less_request_is_routed_on_its_headers(stack: Stack) -> None:
    envoy = stack.envoy("duplex")
    async with aiohttp.ClientSession() as session, session.get(envoy.url + "/v1/models") as reply:
        assert reply.status == 200
        assert (await reply.json())["data"][0]["owned_by"] in stack.engines.members
