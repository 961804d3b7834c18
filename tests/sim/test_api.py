"""The OpenAI/vLLM surface of a real ``epp sim`` process."""

from __future__ import annotations

import aiohttp
import pytest

from epp._util import byte_tokenizer as tokenizer
from epp.engine.filler import FILLER_TEXT
from tests.sim.conftest import SimProcess
from tests.sim.helpers import MODEL, post, scrape, sse


async def test_completion_usage_and_prefix_hit_on_repeat(sim: SimProcess) -> None:
    prompt = "The quick brown fox jumps over the lazy dog. " * 40
    async with aiohttp.ClientSession() as s:
        before = await scrape(s, sim.url)
        status, first = await post(s, f"{sim.url}/v1/completions", {"model": MODEL, "prompt": prompt, "max_tokens": 7})
        assert status == 200
        assert first["object"] == "text_completion" and first["id"].startswith("cmpl-")
        assert first["choices"][0]["finish_reason"] == "length"
        assert first["choices"][0]["text"] == FILLER_TEXT[:28]
        n = len(tokenizer.encode(prompt))
        assert first["usage"] == {"prompt_tokens": n, "total_tokens": n + 7, "completion_tokens": 7,
                                  "prompt_tokens_details": {"cached_tokens": 0, "created_cache_tokens": None,
                                                            "multimodal_tokens": None},
                                  "completion_tokens_details": None}  # fmt: skip
        _, again = await post(s, f"{sim.url}/v1/completions", {"model": MODEL, "prompt": prompt, "max_tokens": 7})
        assert again["usage"]["prompt_tokens_details"]["cached_tokens"] == (n - 1) // 16 * 16
        after = await scrape(s, sim.url)
    assert after["vllm:prefix_cache_queries_total"] - before["vllm:prefix_cache_queries_total"] == 2 * n
    assert after["vllm:prefix_cache_hits_total"] - before["vllm:prefix_cache_hits_total"] == (n - 1) // 16 * 16
    assert after["vllm:prompt_tokens_cached_total"] == after["vllm:prefix_cache_hits_total"]
    assert after["vllm:prompt_tokens_total"] - before["vllm:prompt_tokens_total"] == 2 * n
    assert after["vllm:generation_tokens_total"] - before["vllm:generation_tokens_total"] == 14
    assert after["vllm:e2e_request_latency_seconds_count"] - before["vllm:e2e_request_latency_seconds_count"] == 2
    assert after["vllm:time_to_first_token_seconds_count"] - before["vllm:time_to_first_token_seconds_count"] == 2
    assert after["vllm:inter_token_latency_seconds_count"] - before["vllm:inter_token_latency_seconds_count"] == 12
    assert after["vllm:kv_cache_usage_perc"] == 0.0 == after["vllm:num_requests_running"]


async def test_completion_stream_matches_vllm_framing(sim: SimProcess) -> None:
    body = {
        "model": MODEL,
        "prompt": "hello",
        "max_tokens": 3,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    async with aiohttp.ClientSession() as s:
        events = await sse(s, f"{sim.url}/v1/completions", body)
    assert events[-1] == "[DONE]"
    *chunks, usage = events[:-1]
    assert len(chunks) == 3 and len({c["id"] for c in events[:-1]}) == 1
    assert [c["choices"][0]["text"] for c in chunks] == ["lore", "m ip", "sum "]
    assert [c["choices"][0]["finish_reason"] for c in chunks] == [None, None, "length"]
    assert all(c["object"] == "text_completion" and c["model"] == MODEL for c in events[:-1])
    assert usage["choices"] == [] and usage["usage"]["completion_tokens"] == 3
    assert usage["usage"]["prompt_tokens"] == 2


async def test_chat_stream_and_non_stream(sim: SimProcess) -> None:
    messages = [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": [{"type": "text", "text": "hi"}]},
    ]
    prompt_tokens = len(tokenizer.encode(tokenizer.render_chat(messages)))
    async with aiohttp.ClientSession() as s:
        events = await sse(
            s,
            f"{sim.url}/v1/chat/completions",
            {"model": MODEL, "messages": messages, "stream": True, "max_completion_tokens": 2},
        )
        status, full = await post(
            s, f"{sim.url}/v1/chat/completions", {"model": MODEL, "messages": messages, "max_tokens": 2}
        )
    assert events[-1] == "[DONE]" and len(events) == 4  # role chunk, 2 tokens, DONE (no usage asked)
    assert events[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert [e["choices"][0]["delta"] for e in events[1:3]] == [{"content": "lore"}, {"content": "m ip"}]
    assert events[2]["choices"][0]["finish_reason"] == "length"
    assert all(e["object"] == "chat.completion.chunk" and e["id"].startswith("chatcmpl-") for e in events[:-1])
    assert status == 200 and full["object"] == "chat.completion"
    assert full["choices"][0]["message"]["content"] == "lorem ip"
    assert full["usage"]["prompt_tokens"] == prompt_tokens


async def test_token_id_prompts_and_lora_models(sim: SimProcess) -> None:
    async with aiohttp.ClientSession() as s:
        status, out = await post(
            s, f"{sim.url}/v1/completions", {"model": "adapter-a", "prompt": [[5, 6, 7]], "max_tokens": 1}
        )
        assert status == 200 and out["usage"]["prompt_tokens"] == 3 and out["model"] == "adapter-a"
        async with s.get(f"{sim.url}/v1/models") as resp:
            models = (await resp.json())["data"]
    assert [(m["id"], m["owned_by"], m["parent"]) for m in models] == [
        (MODEL, "vllm", None),
        ("adapter-a", "vllm", MODEL),
    ]


async def test_tokenize_detokenize_round_trip(sim: SimProcess) -> None:
    text = "Grüße, 世界! tokens"
    async with aiohttp.ClientSession() as s:
        _, tok = await post(s, f"{sim.url}/tokenize", {"model": MODEL, "prompt": text})
        _, detok = await post(s, f"{sim.url}/detokenize", {"model": MODEL, "tokens": tok["tokens"]})
        _, chat = await post(s, f"{sim.url}/tokenize", {"messages": [{"role": "user", "content": "x"}]})
        async with s.get(f"{sim.url}/health") as resp:
            assert resp.status == 200
    assert tok["count"] == len(tok["tokens"]) == len(tokenizer.encode(text)) and tok["max_model_len"] > 0
    assert detok == {"prompt": text}
    assert chat["tokens"] == tokenizer.encode("<|user|>\nx\n<|assistant|>\n")


@pytest.mark.parametrize(
    "path, body, status, code",
    [
        ("/v1/completions", b"{not json", 400, "400"),
        ("/v1/completions", b"[1, 2]", 400, "400"),
        ("/v1/completions", {"model": "nope", "prompt": "x"}, 404, "model_not_found"),
        ("/v1/completions", {"model": MODEL}, 400, "400"),
        ("/v1/completions", {"model": MODEL, "prompt": ""}, 400, "400"),
        ("/v1/completions", {"model": MODEL, "prompt": ["a", "b"]}, 400, "400"),
        ("/v1/completions", {"model": MODEL, "prompt": [-1]}, 400, "400"),
        ("/v1/completions", {"model": MODEL, "prompt": "x", "max_tokens": 0}, 400, "400"),
        ("/v1/completions", {"model": MODEL, "prompt": "x", "max_tokens": True}, 400, "400"),
        ("/v1/completions", {"model": MODEL, "prompt": "x", "stream": "yes"}, 400, "400"),
        ("/v1/completions", {"model": MODEL, "prompt": "x" * 40_000}, 400, "400"),  # > the 400-block KV cache
        ("/v1/chat/completions", {"model": MODEL, "messages": []}, 400, "400"),
        ("/v1/chat/completions", {"model": MODEL, "messages": [{"content": "no role"}]}, 400, "400"),
        ("/tokenize", {"model": MODEL}, 400, "400"),
        ("/detokenize", {"tokens": ["a"]}, 400, "400"),
        ("/detokenize", {"tokens": [2**40]}, 400, "400"),
    ],
)
async def test_bad_input_gets_an_openai_error(sim: SimProcess, path: str, body: object, status: int, code: str) -> None:
    async with aiohttp.ClientSession() as s:
        got, err = await post(s, f"{sim.url}{path}", body)
        assert (got, err["error"]["code"]) == (status, code)
        assert isinstance(err["error"]["message"], str) and err["error"]["message"]
        ok, _ = await post(s, f"{sim.url}/v1/completions", {"model": MODEL, "prompt": "still alive", "max_tokens": 1})
    assert ok == 200


async def test_eviction_drops_old_prefixes(sim: SimProcess) -> None:
    """400 blocks = 6,400 tokens: a few different 2,000-token prompts evict the first one."""
    first = "A" * 8000  # 2,000 tokens
    async with aiohttp.ClientSession() as s:
        await post(s, f"{sim.url}/v1/completions", {"model": MODEL, "prompt": first, "max_tokens": 1})
        _, hit = await post(s, f"{sim.url}/v1/completions", {"model": MODEL, "prompt": first, "max_tokens": 1})
        assert hit["usage"]["prompt_tokens_details"]["cached_tokens"] == 1984
        for letter in "BCDE":
            await post(s, f"{sim.url}/v1/completions", {"model": MODEL, "prompt": letter * 8000, "max_tokens": 1})
        _, miss = await post(s, f"{sim.url}/v1/completions", {"model": MODEL, "prompt": first, "max_tokens": 1})
    assert miss["usage"]["prompt_tokens_details"]["cached_tokens"] == 0
