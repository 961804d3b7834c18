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
