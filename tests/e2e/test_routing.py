"""Requests go where epp says, through a real Envoy, in every supported processing and routing mode."""

from __future__ import annotations

import asyncio
import hashlib

import aiohttp
import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import wait_for
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


async def test_finished_requests_reach_ntpot_and_plugin_timings_under_both_names(stack: Stack) -> None:
    """NTPOT (duration ÷ completion tokens) is recorded at response end from the usage epp counted
    through Envoy; scraped from the picker's metrics port as a Prometheus server would."""
    model = "ntpot-probe"  # a model no other test sends, so its series hold this request only
    reply = await post(stack.envoy("duplex"), {"model": model, "prompt": "once upon"}, path="/v1/completions")
    assert reply.status == 200, reply.body
    url = f"http://127.0.0.1:{stack.picker('plain').metrics_port}/metrics"

    async def scrape() -> dict[tuple[str, str], float]:
        async with aiohttp.ClientSession() as session, session.get(url) as metrics:
            text = await metrics.text()
        return {(s.name, s.labels.get("model_name", "") + s.labels.get("extension_point", "")): s.value
                for family in text_string_to_metric_families(text) for s in family.samples}

    async def recorded() -> bool:
        return (await scrape()).get(("llm_d_epp_request_ntpot_seconds_count", model)) == 1

    await wait_for(recorded, what="NTPOT of the finished request")
    samples = await scrape()
    gie = samples[("inference_objective_normalized_time_per_output_token_seconds_sum", model)]
    assert gie == samples[("llm_d_epp_request_ntpot_seconds_sum", model)] > 0
    assert gie <= samples[("inference_objective_request_duration_seconds_sum", model)] / 4  # 4 completion tokens
    assert samples[("inference_extension_plugin_duration_seconds_count", "Picker")] >= 1
    assert samples[("llm_d_epp_plugin_duration_seconds_count", "Picker")] >= 1


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
