"""``epp sim --role``: a decode engine given the prefill header runs the prompt's prefill on that engine
first (as llm-d's sidecar does), receives its KV, then decodes; both engines' metrics show their half."""

from __future__ import annotations

import aiohttp
import zmq
import zmq.asyncio

from epp.contracts.kv_events import Stored
from epp._util.hashing import chain_hashes, seed_hash, token_blocks
from epp._util import byte_tokenizer as tokenizer
from epp.engine.block_pool import BlockStored
from epp.engine.config import EngineConfig
from epp.engine.core import EngineCore
from epp.engine.request import EngineRequest
from epp.kvevents.decode import decode_message
from tests.sim.conftest import run_sim
from tests.sim.helpers import MODEL, scrape, sse

PROMPT = "the quick brown fox jumps over the lazy dog " * 12  # several 16-token blocks


def test_received_kv_is_a_prefix_hit_and_a_block_stored_event() -> None:
    core = EngineCore(EngineConfig(num_gpu_blocks=64, enable_kv_events=True))
    prompt = list(range(1, 51))  # 3 full blocks of 16 + 2 tokens
    assert core.receive_kv(prompt) == 48
    (stored,) = core.take_kv_events()
    assert isinstance(stored, BlockStored) and len(stored.block_hashes) == 3
    assert core.receive_kv(prompt) == 48 and core.take_kv_events() == []  # already here: nothing copied
    core.add_request(EngineRequest("r", prompt, 2, 0.0))
    core.step(0.0)
    assert core.stats().prefix_cache_hits == 48


async def test_decode_engine_runs_the_prefill_remotely_then_decodes_with_its_kv() -> None:
    with run_sim("--time-scale", "0", "--role", "prefill") as prefill, \
            run_sim("--time-scale", "0", "--role", "decode") as decode:
        async with aiohttp.ClientSession() as s:
            body = {"model": MODEL, "prompt": PROMPT, "max_tokens": 5, "stream": True,
                    "stream_options": {"include_usage": True}}
            headers = {"x-prefiller-host-port": f"127.0.0.1:{prefill.port}"}
            async with s.post(f"{decode.url}/v1/completions", json=body, headers=headers) as resp:
                assert resp.status == 200
                raw = (await resp.read()).decode()
            assert raw.endswith("data: [DONE]\n\n")
            usage = [e for e in raw.split("\n\n") if '"usage"' in e][-1]
            assert '"completion_tokens":5' in usage and '"cached_tokens":0' not in usage
            p, d = await scrape(s, prefill.url), await scrape(s, decode.url)
            prompt_tokens = p["vllm:prompt_tokens_total"]
            assert prompt_tokens > 100 and p["vllm:generation_tokens_total"] == 1  # the prefill, max_tokens 1
            assert d["vllm:generation_tokens_total"] == 5
            assert d["vllm:prefix_cache_hits_total"] >= prompt_tokens - 16  # all full blocks arrived as KV
            # Without the header a decode engine serves alone, and a prefill engine ignores the header.
            await sse(s, f"{prefill.url}/v1/completions", {**body, "prompt": "other " * 40})
            assert (await scrape(s, prefill.url))["vllm:generation_tokens_total"] == 6


async def test_an_unreachable_prefill_engine_is_a_clear_502() -> None:
    with run_sim("--time-scale", "0", "--role", "decode") as decode:
        async with aiohttp.ClientSession() as s:
            async with s.post(f"{decode.url}/v1/completions", json={"model": MODEL, "prompt": "hi", "max_tokens": 1},
                              headers={"x-llm-d-prefiller-host-port": "127.0.0.1:9"}) as resp:
                assert resp.status == 502
                assert "prefill engine 127.0.0.1:9 unreachable" in (await resp.json())["error"]["message"]


async def test_the_decode_engine_publishes_the_received_kv_as_block_stored() -> None:
    ctx = zmq.asyncio.Context()
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.LINGER, 0)
    port = sub.bind_to_random_port("tcp://127.0.0.1")
    sub.setsockopt(zmq.SUBSCRIBE, b"")  # vLLM's default topic is empty
    try:
        with run_sim("--time-scale", "0", "--role", "prefill") as prefill, \
                run_sim("--time-scale", "0", "--role", "decode", "--kv-events-endpoint", f"tcp://127.0.0.1:{port}") as decode:
            async with aiohttp.ClientSession() as s:
                frames = prompt = None
                for attempt in range(50):  # a connecting PUB drops messages until the subscription arrives
                    prompt = f"{attempt:04d}" + "k" * 252  # 64 tokens = 4 full blocks
                    body = {"model": MODEL, "prompt": prompt, "max_tokens": 1}
                    async with s.post(f"{decode.url}/v1/completions", json=body,
                                      headers={"x-prefiller-host-port": f"127.0.0.1:{prefill.port}"}) as resp:
                        assert resp.status == 200
                    if await sub.poll(100):
                        frames = await sub.recv_multipart()
                        break
                assert frames is not None and prompt is not None, "no KV event received"
                # every request found its 3 leading blocks already there: the KV came from the prefill engine
                assert (await scrape(s, decode.url))["vllm:prefix_cache_hits_total"] == 48 * (attempt + 1)
    finally:
        sub.close()
        ctx.term()
    stored = decode_message(frames).events[0]
    tokens = tokenizer.encode(prompt)
    assert isinstance(stored, Stored)
    assert stored.block_hashes == tuple(chain_hashes(token_blocks(tokens, 16), seed_hash(MODEL)))


def media_chat(*urls: str) -> dict[str, object]:
    parts: list[dict[str, object]] = [{"type": "text", "text": "what is in these pictures?"}]
    parts += [{"type": "image_url", "image_url": {"url": url}} for url in urls]
    return {"model": MODEL, "messages": [{"role": "user", "content": parts}], "max_tokens": 3}


async def test_encoders_take_the_media_and_the_decode_engine_skips_the_encode_cost() -> None:
    """E/P/D: with x-encoder-hosts-ports the decode engine's sidecar sends each distinct media item to an
    encode engine (round robin) and skips encoding; without it the engine encodes the media itself, which
    costs it engine time (its TTFT) and prompt tokens, but never counts as a request of its API."""
    with run_sim("--time-scale", "0", "--role", "encode") as enc0, \
            run_sim("--time-scale", "0", "--role", "encode") as enc1, \
            run_sim("--time-scale", "0", "--role", "decode") as decode, \
            run_sim("--time-scale", "0", "--role", "both") as alone:
        async with aiohttp.ClientSession() as s:
            body = media_chat("http://img/a.png", "http://img/b.png", "http://img/a.png")
            encoders = {"x-encoder-hosts-ports": f"127.0.0.1:{enc0.port},127.0.0.1:{enc1.port}"}
            async with s.post(f"{decode.url}/v1/chat/completions", json=body, headers=encoders) as resp:
                assert resp.status == 200 and (await resp.json())["usage"]["completion_tokens"] == 3
            async with s.post(f"{alone.url}/v1/chat/completions", json=body) as resp:
                assert resp.status == 200
            e0, e1 = await scrape(s, enc0.url), await scrape(s, enc1.url)
            d, a = await scrape(s, decode.url), await scrape(s, alone.url)
    for e in (e0, e1):  # a and b, once each (the repeated URL is encoded once)
        assert e["vllm:e2e_request_latency_seconds_count"] == 1 and e["vllm:generation_tokens_total"] == 1
        assert e["vllm:prompt_tokens_total"] >= 576
    assert d["vllm:e2e_request_latency_seconds_count"] == a["vllm:e2e_request_latency_seconds_count"] == 1
    assert a["vllm:prompt_tokens_total"] >= d["vllm:prompt_tokens_total"] + 3 * 576  # encoded its three items itself
    assert a["vllm:time_to_first_token_seconds_sum"] > d["vllm:time_to_first_token_seconds_sum"]


async def test_a_failing_encoder_is_the_answer_and_a_prefill_gets_the_encoder_outputs() -> None:
    with run_sim("--time-scale", "0", "--role", "encode") as enc, \
            run_sim("--time-scale", "0", "--role", "prefill") as prefill, \
            run_sim("--time-scale", "0", "--role", "decode") as decode:
        async with aiohttp.ClientSession() as s:
            body = media_chat("http://img/a.png")
            async with s.post(f"{decode.url}/v1/chat/completions", json=body,
                              headers={"x-encoder-hosts-ports": "127.0.0.1:9"}) as resp:
                assert resp.status == 502
                assert "encode engine 127.0.0.1:9 unreachable" in (await resp.json())["error"]["message"]
            headers = {"x-llm-d-encoder-hosts-ports": f"127.0.0.1:{enc.port}",
                       "x-llm-d-prefiller-host-port": f"127.0.0.1:{prefill.port}"}
            async with s.post(f"{decode.url}/v1/chat/completions", json=body, headers=headers) as resp:
                assert resp.status == 200
            e, p, d = await scrape(s, enc.url), await scrape(s, prefill.url), await scrape(s, decode.url)
    assert e["vllm:e2e_request_latency_seconds_count"] == 1
    # the prefill engine ran the prompt (media placeholders included) but not the encoder: ec_transfer_params
    assert 576 < p["vllm:prompt_tokens_total"] < 2 * 576 and p["vllm:generation_tokens_total"] == 1
    assert d["vllm:generation_tokens_total"] == 3 and d["vllm:prefix_cache_hits_total"] >= 576


def test_media_items_are_placeholder_tokens_before_the_text_and_deduplicated_by_url_for_the_encoders() -> None:
    from epp.sim.protocol import MEDIA_ITEM_TOKENS, parse
    from epp.sim.sidecar import encoder_body, fanout_items

    text_only = parse("chat", {"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}, 4)
    assert text_only.media == () and text_only.prompt_token_ids == tokenizer.encode(tokenizer.render_chat(
        [{"role": "user", "content": "hi"}]))
    audio = {"type": "input_audio", "input_audio": {"data": "UklGRg==", "format": "wav"}}
    body = media_chat("http://img/a.png", "http://img/b.png", "http://img/a.png")
    body["messages"][0]["content"].append(audio)  # type: ignore[index]
    parsed = parse("chat", body, 4)
    a, b, a_again, inline = parsed.media
    assert a.tokens == a_again.tokens != b.tokens and len(a.tokens) == MEDIA_ITEM_TOKENS and inline.url == ""
    text = tokenizer.encode(tokenizer.render_chat(body["messages"]))  # type: ignore[arg-type]
    assert parsed.prompt_token_ids == [t for item in parsed.media for t in item.tokens] + text
    assert [i.url for i in fanout_items(parsed.media)] == ["http://img/a.png", "http://img/b.png", ""]
    sent = encoder_body({**body, "stream": True, "stream_options": {"include_usage": True}}, b)
    assert sent["messages"] == [{"role": "user", "content": [b.part]}]
    assert (sent["max_tokens"], sent["stream"], "stream_options" in sent) == (1, False, False)
