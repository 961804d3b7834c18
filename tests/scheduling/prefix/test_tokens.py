"""The request side hashes exactly the token blocks the simulator's engine caches."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import pytest

from epp._util.hashing import chain_hashes, seed_hash, token_blocks
from epp._util import byte_tokenizer as tokenizer
from epp.request import LLMRequest, RequestKind
from epp.scheduling.prefix.tokens import engine_block_hashes, prompt_token_ids
from epp.tokenizer.load import load_tokenizer
from epp.sim.protocol import chat_prompt

SIM = load_tokenizer("sim")
MESSAGES = [{"role": "system", "content": "You are terse." * 8}, {"role": "user", "content": "Hi " * 40}]


def request(kind: RequestKind, body: dict[str, Any], **kw: Any) -> LLMRequest:
    return LLMRequest("r", kind, "m", body=body, **kw)


def test_chat_and_completions_prompts_tokenize_as_the_simulator_does() -> None:
    chat = request(RequestKind.CHAT_COMPLETIONS, {"messages": MESSAGES})
    assert prompt_token_ids(chat, SIM) == chat_prompt(MESSAGES)
    text = "a long shared system prompt " * 10
    for prompt in (text, [text]):
        assert prompt_token_ids(request(RequestKind.COMPLETIONS, {"prompt": prompt}), SIM) == tokenizer.encode(text)
    assert prompt_token_ids(request(RequestKind.COMPLETIONS, {"prompt": [5, 6, 7]}), SIM) == [5, 6, 7]
    carried = request(RequestKind.COMPLETIONS, {"prompt": text}, prompt_token_ids=[1, 2])
    assert prompt_token_ids(carried, SIM) == [1, 2]
    raw = LLMRequest("r", RequestKind.OTHER, "m", prompt_bytes=text.encode())
    assert prompt_token_ids(raw, SIM) == tokenizer.encode(text)


def test_no_usable_prompt_hashes_to_nothing() -> None:
    bad_chat = request(RequestKind.CHAT_COMPLETIONS, {"messages": [{"content": "no role"}]})
    assert prompt_token_ids(bad_chat, SIM) == []
    assert engine_block_hashes(request(RequestKind.COMPLETIONS, {}), SIM, 16, 256) == []


def test_block_hashes_are_the_engines_chain_seeded_with_the_target_model() -> None:
    text = "x" * 200  # 50 tokens: 3 full blocks of 16
    req = LLMRequest("r", RequestKind.COMPLETIONS, "alias", target_model="adapter", body={"prompt": text})
    expected = chain_hashes(token_blocks(tokenizer.encode(text), 16), seed_hash("adapter"))
    assert len(expected) == 3
    assert engine_block_hashes(req, SIM, 16, 256) == expected
    assert engine_block_hashes(req, SIM, 16, 2) == expected[:2]


class _Upper:
    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return [ord(c) for c in text.upper()]

    def render_chat(self, messages: Sequence[Mapping[str, Any]], options: Mapping[str, Any] | None = None) -> str:
        return "|".join(str(m.get("content")) for m in messages)


def make_upper() -> _Upper:
    return _Upper()


def make_nothing() -> object:
    return object()


def test_a_tokenizer_is_loaded_from_an_import_path() -> None:
    upper = load_tokenizer(f"{__name__}:make_upper")
    assert prompt_token_ids(request(RequestKind.COMPLETIONS, {"prompt": "ab"}), upper) == [65, 66]


@pytest.mark.parametrize("spec", ["", "nocolon", "no.such.module:f", f"{__name__}:missing", f"{__name__}:make_nothing"])
def test_bad_tokenizer_specs_say_why(spec: str) -> None:
    with pytest.raises(ValueError):
        load_tokenizer(spec)


def test_the_sim_tokenizers_byte_shortcut_hashes_exactly_the_token_blocks() -> None:
    """``engine_block_hashes`` hashes a text prompt's padded bytes instead of packing token ids: the
    result must be the engine's token blocks, for any text (multi-byte characters, a lone surrogate,
    a tail padded into a full block), for chat prompts and under the block limit."""
    texts = ["x" * n for n in range(0, 140, 7)] + ["é" * 33, "日本語のテキスト" * 9, "a\ud800b" * 30, "y" * 63]
    for text in texts:
        for block, limit in ((16, 256), (4, 3), (1, 1000)):
            expected = chain_hashes(token_blocks(tokenizer.encode(text)[: block * limit], block), seed_hash("m"))
            got = engine_block_hashes(request(RequestKind.COMPLETIONS, {"prompt": text}), SIM, block, limit)
            assert got == expected, (text, block, limit)
    chat = request(RequestKind.CHAT_COMPLETIONS, {"messages": MESSAGES})
    assert engine_block_hashes(chat, SIM, 16, 256) == chain_hashes(token_blocks(chat_prompt(MESSAGES), 16), seed_hash("m"))
    raw = LLMRequest("r", RequestKind.OTHER, "m", prompt_bytes=b"\xff\xfe raw bytes" * 20)
    assert engine_block_hashes(raw, SIM, 16, 256) == chain_hashes(token_blocks(prompt_token_ids(raw, SIM), 16), seed_hash("m"))
