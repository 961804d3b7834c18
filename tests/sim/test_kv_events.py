"""KV-cache events over ZMQ, decoded the way llm-d's indexer decodes them."""

from __future__ import annotations

import aiohttp
import msgpack
import zmq
import zmq.asyncio

from epp._util.hashing import chain_hashes, seed_hash, token_blocks
from epp.engine import tokenizer
from tests.sim.conftest import run_sim
from tests.sim.helpers import MODEL, post


async def test_block_stored_events_carry_the_prompt_chain() -> None:
    ctx = zmq.asyncio.Context()
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.LINGER, 0)
    port = sub.bind_to_random_port("tcp://127.0.0.1")
    sub.setsockopt(zmq.SUBSCRIBE, b"kv@")
    try:
        with run_sim(
            "--time-scale", "0", "--kv-events-endpoint", f"tcp://127.0.0.1:{port}", "--kv-cache-blocks", "64"
        ) as sim:
            async with aiohttp.ClientSession() as s:
                frames = None
                for attempt in range(50):  # a connecting PUB drops messages until the subscription arrives
                    prompt = f"{attempt:04d}" + "z" * 252  # 64 tokens = 4 full blocks
                    await post(s, f"{sim.url}/v1/completions", {"model": MODEL, "prompt": prompt, "max_tokens": 1})
                    if await sub.poll(100):
                        frames = await sub.recv_multipart()
                        break
                assert frames is not None, "no KV event received"
    finally:
        sub.close()
        ctx.term()
    topic, seq, payload = frames
    assert topic.decode().startswith("kv@127.0.0.1:") and topic.decode().endswith(f"@{MODEL}")
    assert len(seq) == 8
    ts, events = msgpack.unpackb(payload)
    assert isinstance(ts, float)
    tag, hashes, parent, token_ids, block_size, lora_id, medium, lora_name = events[0]
    tokens = tokenizer.encode(prompt)
    assert (tag, parent, block_size, lora_id, medium, lora_name) == ("BlockStored", None, 16, None, "GPU", None)
    assert hashes == chain_hashes(token_blocks(tokens, 16), seed_hash(MODEL))
    assert token_ids == tokens
