"""KV-cache events over ZMQ as today's vLLM (and SGLang, and older engines) publish them, from a real
``epp sim`` process, compared field by field with a captured vLLM 0.32 batch."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import msgpack
import pytest
import zmq
import zmq.asyncio

from epp.contracts.kv_events import Stored
from epp._util.hashing import chain_hashes, seed_hash, token_blocks
from epp._util import byte_tokenizer as tokenizer
from epp.kvevents.decode import decode_message
from tests.kvevents.captures import messages
from tests.sim.conftest import run_sim
from tests.sim.helpers import MODEL, post
from tests.test_app import free_port


@pytest.fixture
async def sub() -> AsyncIterator[tuple[zmq.asyncio.Socket, int]]:
    """A SUB bound on a free port (the sim connects to it), subscribed to every topic."""
    ctx = zmq.asyncio.Context()
    sock = ctx.socket(zmq.SUB)
    sock.setsockopt(zmq.LINGER, 0)
    port = sock.bind_to_random_port("tcp://127.0.0.1")
    sock.setsockopt(zmq.SUBSCRIBE, b"")
    yield sock, port
    sock.close()
    ctx.term()


async def first_batch(sock: zmq.asyncio.Socket, url: str, body: dict[str, Any] | None = None) -> tuple[list[bytes], str]:
    """Send 4-block prompts until a batch arrives (a connecting PUB drops messages until the
    subscription reaches it); the frames and the prompt that produced them."""
    async with aiohttp.ClientSession() as s:
        for attempt in range(50):
            prompt = f"{attempt:04d}" + "z" * 252  # 64 tokens = 4 full blocks
            await post(s, f"{url}/v1/completions", {"model": MODEL, "prompt": prompt, "max_tokens": 1, **(body or {})})
            if await sock.poll(100):
                return await sock.recv_multipart(), prompt
    raise AssertionError("no KV event received")


async def test_by_default_events_are_vllm_0_32_maps_with_every_captured_field(sub: tuple[zmq.asyncio.Socket, int]) -> None:
    sock, port = sub
    with run_sim("--time-scale", "0", "--kv-events-endpoint", f"tcp://127.0.0.1:{port}", "--kv-cache-blocks", "64") as sim:
        (topic, seq, payload), prompt = await first_batch(sock, sim.url)
    assert topic == b"" and len(seq) == 8  # vLLM's default topic
    ts, events, rank = msgpack.unpackb(payload)
    assert isinstance(ts, float) and rank == 0
    stored = events[0]
    captured = messages("vllm_events1")[0]["payload"][1][0]
    assert list(stored) == list(captured)  # the same fields, in the same order
    tokens = tokenizer.encode(prompt)
    assert stored["block_hashes"] == chain_hashes(token_blocks(tokens, 16), seed_hash(MODEL))
    assert stored["token_ids"] == tokens and stored["extra_keys"] == [None] * 4
    assert (stored["medium"], stored["group_idx"], stored["kv_cache_spec_kind"]) == ("GPU", 0, "full_attention")
    batch = decode_message([topic, seq, payload])
    assert isinstance(batch.events[0], Stored) and batch.events[0].token_ids == tuple(tokens)


async def test_a_cache_salt_travels_in_the_first_blocks_extra_keys(sub: tuple[zmq.asyncio.Socket, int]) -> None:
    sock, port = sub
    with run_sim("--time-scale", "0", "--kv-events-endpoint", f"tcp://127.0.0.1:{port}") as sim:
        (_, _, payload), prompt = await first_batch(sock, sim.url, {"cache_salt": "tenant-1"})
    stored = msgpack.unpackb(payload)[1][0]
    assert stored["extra_keys"] == [["tenant-1"], None, None, None]
    assert stored["block_hashes"] == chain_hashes(token_blocks(tokenizer.encode(prompt), 16), seed_hash(MODEL + "tenant-1"))


async def test_older_engines_tagged_arrays_and_llm_ds_topic_behind_flags(sub: tuple[zmq.asyncio.Socket, int]) -> None:
    sock, port = sub
    args = ("--time-scale", "0", "--kv-events-endpoint", f"tcp://127.0.0.1:{port}", "--kv-events-encoding", "array",
            "--kv-events-topic", "kv@{host}:{port}@{model}")  # fmt: skip
    with run_sim(*args) as sim:
        (topic, _, payload), prompt = await first_batch(sock, sim.url)
        assert topic.decode() == f"kv@127.0.0.1:{sim.port}@{MODEL}"
    ts, events = msgpack.unpackb(payload)
    tag, hashes, parent, token_ids, block_size, lora_id, medium, lora_name = events[0]
    assert (tag, parent, block_size, lora_id, medium, lora_name) == ("BlockStored", None, 16, None, "GPU", None)
    assert token_ids == tokenizer.encode(prompt)


async def test_sglang_sends_its_own_fields(sub: tuple[zmq.asyncio.Socket, int]) -> None:
    sock, port = sub
    with run_sim("--engine", "sglang", "--time-scale", "0", "--kv-events-endpoint", f"tcp://127.0.0.1:{port}") as sim:
        (_, _, payload), _ = await first_batch(sock, sim.url, {"cache_salt": "s"})
    ts, events, attn_dp_rank = msgpack.unpackb(payload)
    assert attn_dp_rank is None
    assert set(events[0]) == {"type", "block_hashes", "parent_block_hash", "token_ids", "block_size", "lora_id",
                              "medium", "cache_salt"}  # fmt: skip


async def test_the_replay_socket_answers_as_vllms_does() -> None:
    ctx = zmq.asyncio.Context()
    dealer = ctx.socket(zmq.DEALER)
    dealer.setsockopt(zmq.LINGER, 0)
    try:
        with run_sim("--time-scale", "0", "--kv-events-endpoint", f"tcp://127.0.0.1:{free_port()}",
                     "--kv-events-replay-endpoint", "tcp://127.0.0.1:*") as sim:  # fmt: skip
            # a connecting PUB with nobody listening: every batch is dropped, but the replay buffer keeps it
            async with aiohttp.ClientSession() as s:
                for i in range(3):
                    await post(s, f"{sim.url}/v1/completions", {"model": MODEL, "prompt": f"{i}" * 64, "max_tokens": 1})
            replay = next(line for line in sim.log.read_text().splitlines() if "KV-event replay on" in line)
            dealer.connect(replay.rsplit(" ", 1)[1])
            await dealer.send_multipart([b"", (1).to_bytes(8, "big")])
            replies = []
            while await dealer.poll(5000):
                replies.append(await dealer.recv_multipart())
                if replies[-1][2] == (-1).to_bytes(8, "big", signed=True):
                    break
    finally:
        dealer.close()
        ctx.term()
    *batches, end = replies
    assert end == [b"", b"", (-1).to_bytes(8, "big", signed=True), b""]
    seqs = [int.from_bytes(r[2], "big") for r in batches]
    assert len(seqs) >= 2 and seqs == list(range(1, 1 + len(seqs)))  # from the requested seq on
    assert all(r[:2] == [b"", b""] and decode_message(r[1:]).events for r in batches)
