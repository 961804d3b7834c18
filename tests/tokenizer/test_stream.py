"""Reading a prompt's ids lazily (``HFTokenizer.stream``) never changes them: read in any steps,
cut in many windows, for the tiny model's GPT-2 style byte-level BPE and for tokenizers built like
Llama 3 / Qwen 2 (regex ``Split`` then byte-level, NFC); tokenizers whose cuts are not proven
(Metaspace) are read whole. The window cache stays within its bound."""

from __future__ import annotations

import json
from array import array
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tokenizers import (
    Regex,
    Tokenizer,
    decoders,
    models,
    normalizers,
    pre_tokenizers,
    trainers,
)

from epp._util.hashing import token_bytes
from epp.tokenizer.hf import HFTokenizer, TokenStream, _streamable

MODEL_DIR = Path(__file__).parents[1] / "data" / "vllm-0.32-cpu" / "tiny-llama"
SPECIALS = ["<|begin_of_text|>", "<|eot_id|>", "<|start_header_id|>", "<|end_header_id|>"]
# Llama 3's pre-tokenizer pattern (Qwen 2's differs only in \p{N} instead of \p{N}{1,3})
LLAMA3 = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
          r"|\s*[\r\n]+|\s+(?!\S)|\s+")  # fmt: skip
CORPUS = ["The function returns the number of items in the list, don't it?", "Zwölf Boxkämpfer jagen Viktor.",
          "x = 12345 + 678;\n\n    return x  # done", "naïve café, ¿qué tal?  中文 テキスト 😀"] * 20  # fmt: skip


def _built(tmp_path: Path, pre: Any, normalizer: Any = None) -> HFTokenizer:
    """A small BPE trained here with the given pre-tokenizer (nothing downloaded), saved as a model
    folder with a Llama 3 style BOS post-processor and added tokens."""
    from tokenizers import processors

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre
    if normalizer is not None:
        tokenizer.normalizer = normalizer
    tokenizer.decoder = decoders.ByteLevel()
    alphabet = pre_tokenizers.ByteLevel.alphabet() if "ByteLevel" in str(pre.__getstate__()) else []
    tokenizer.train_from_iterator(CORPUS, trainers.BpeTrainer(vocab_size=600, special_tokens=SPECIALS, initial_alphabet=alphabet))
    tokenizer.post_processor = processors.TemplateProcessing(single="<|begin_of_text|> $A", special_tokens=[("<|begin_of_text|>", 0)])
    tokenizer.save(str(tmp_path / "tokenizer.json"))
    return HFTokenizer.from_dir(tmp_path)


@pytest.fixture(scope="module")
def kinds(tmp_path_factory: pytest.TempPathFactory) -> dict[str, HFTokenizer]:
    def folder(name: str) -> Path:
        return tmp_path_factory.mktemp(name)

    llama3 = pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(LLAMA3), "isolated"),
                                      pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])  # fmt: skip
    return {
        "tiny (GPT-2 regex byte-level)": HFTokenizer.from_dir(MODEL_DIR),
        "llama3 split + byte-level": _built(folder("llama3"), llama3),
        "qwen2 style, NFC": _built(folder("qwen2"), llama3, normalizers.NFC()),
        "metaspace": _built(folder("meta"), pre_tokenizers.Metaspace()),
    }


def test_which_tokenizers_stream(kinds: dict[str, HFTokenizer]) -> None:
    assert {name: t._stream_ok for name, t in kinds.items()} == {
        "tiny (GPT-2 regex byte-level)": True, "llama3 split + byte-level": True, "qwen2 style, NFC": True,
        "metaspace": False,  # marks the start of the text: a cut would add a mark; read whole
    }  # fmt: skip
    lookbehind = pre_tokenizers.Split(Regex(r"(?<=\s)\w+|\s+"), "isolated")
    anchored = pre_tokenizers.Split(Regex(r"^\s+|\w+|\s+"), "isolated")
    negated_class = pre_tokenizers.Split(Regex(r"[^\s\w]+|\w+|\s+"), "isolated")  # ^ inside a class is no anchor
    for pre, streams in ((lookbehind, False), (anchored, False), (negated_class, True)):
        t = Tokenizer(models.BPE())
        t.pre_tokenizer = pre
        assert _streamable(t) is streams


def _read(stream: TokenStream, steps: list[int]) -> list[int]:
    """Read in the given step sizes, then the rest with ``read_all``."""
    chunks = [stream.read(n) for n in steps]
    chunks.append(stream.read_all())
    assert stream.done and stream.read(1) == b"" and stream.tokens_left() == 0
    return array("I", b"".join(chunks)).tolist()


_PIECES = st.sampled_from(["the", " list", "  ", "   ", "\n", "\n\n", " \n ", ".", ",", " items", "42", "12345", "é",
                           "e\u0301", "\t", " returns", "(x)", "'s", " don't", "中文", "😀", " ", "x" * 30, "ab", "\r\n"])  # fmt: skip


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.one_of(_PIECES, st.sampled_from(SPECIALS), st.text(max_size=12)), max_size=250),
       st.booleans(), st.integers(6, 80), st.lists(st.integers(1, 40), max_size=6), st.sampled_from(range(4)))  # fmt: skip
def test_a_stream_gives_the_whole_texts_ids(kinds: dict[str, HFTokenizer], pieces: list[str], special: bool,
                                            window: int, steps: list[int], which: int) -> None:  # fmt: skip
    """Any text, any window size (many cuts), read in any steps: the ids of encoding the text whole."""
    tokenizer = list(kinds.values())[which]
    text = "".join(pieces)
    tokenizer._window = window
    try:
        for _ in range(2):  # fresh, then from the caches the first read filled
            got = _read(tokenizer.stream(text, special), steps)
            assert got == tokenizer._backend.encode(text, add_special_tokens=special).ids
    finally:
        tokenizer._window = 768


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.tuples(st.sampled_from(["system", "user", "assistant"]), st.lists(_PIECES, max_size=120)), min_size=1,
                max_size=5), st.integers(8, 64))  # fmt: skip
def test_a_streamed_chat_prompt_gives_the_rendered_chats_ids(kinds: dict[str, HFTokenizer], turns: list[tuple[str, list[str]]],
                                                             window: int) -> None:  # fmt: skip
    tiny = kinds["tiny (GPT-2 regex byte-level)"]
    text = tiny.render_chat([{"role": role, "content": "".join(words)} for role, words in turns])
    tiny._window = window
    try:
        assert _read(tiny.stream(text, False), [1]) == tiny._backend.encode(text, add_special_tokens=False).ids
    finally:
        tiny._window = 768


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.one_of(_PIECES, st.text(max_size=12)), min_size=300, max_size=1500), st.lists(st.sampled_from(SPECIALS), max_size=2),
       st.booleans(), st.integers(6, 80), st.lists(st.integers(1, 40), min_size=1, max_size=3), st.integers(1, 120),
       st.sampled_from(range(4)))  # fmt: skip
def test_a_rest_up_to_a_limit_then_the_rest_gives_the_whole_texts_ids(
    kinds: dict[str, HFTokenizer], pieces: list[str], specials: list[str], special: bool, window: int, steps: list[int],
    limit: int, which: int,
) -> None:
    """``rest(limit)`` (what a prefix index matching only the first blocks asks at a first response):
    at least ``limit`` more ids or all, a prefix of the whole text's, and the stream reads on from there.
    Long pieces (few added tokens) so that the rest is read in windows."""
    tokenizer = list(kinds.values())[which]
    for k, added in enumerate(specials):
        pieces.insert(len(pieces) * (k + 1) // (len(specials) + 1), added)
    text = "".join(pieces)
    whole = tokenizer._backend.encode(text, add_special_tokens=special).ids
    tokenizer._window = window
    try:
        stream = tokenizer.stream(text, special)
        head = b"".join(stream.read(n) for n in steps)
        job = stream.rest(limit)
        more = job.compute()()  # both steps, the first as a worker would run it
        assert len(more) // 4 >= limit or stream.done
        got = array("I", head + more + stream.read_all()).tolist()
        assert got == whole and stream.done
    finally:
        tokenizer._window = 768


def test_a_rest_in_windows_that_reaches_its_pieces_end_reads_the_pieces_after_it(kinds: dict[str, HFTokenizer]) -> None:
    """The windows' size is estimated from the characters per token seen so far; where the piece ends
    before the limit was reached, the pieces after it are read whole in the same job."""
    tokenizer = kinds["llama3 split + byte-level"]
    text = "alpha beta, gamma  delta; epsilon\n zeta (eta) " * 40 + SPECIALS[1] + " theta iota" * 30
    stream = tokenizer.stream(text, True)
    head = stream.read(5)
    more = stream._windows_up_to(10_000, 0.5).run()  # windows far too small for the limit: the piece ends first
    assert stream.done
    assert array("I", head + more).tolist() == tokenizer._backend.encode(text, add_special_tokens=True).ids


def test_a_unique_prompt_is_read_one_window_at_a_time() -> None:
    tiny = HFTokenizer.from_dir(MODEL_DIR)
    text = "The function returns the number of items in the list. " * 200  # 11,000 characters
    stream = tiny.stream(text, True)
    first = stream.read(16)
    assert 16 <= len(first) // 4 <= 200  # the BOS and one window's ids, not the prompt's ~2,000
    assert stream._read_chars <= 768
    assert abs(stream.tokens_left() - (len(tiny.encode(text)) - len(first) // 4)) < 50


def test_a_shared_preamble_is_encoded_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """Completion prompts sharing a long preamble: read as far as a prefix index would (past the
    preamble), the preamble's windows are encoded for the first prompt only."""
    tiny = HFTokenizer.from_dir(MODEL_DIR)
    encoded: list[str] = []
    backend = tiny._backend

    class Spy:
        def __getattr__(self, name: str) -> Any:
            return getattr(backend, name)

        def encode(self, text: str, add_special_tokens: bool) -> Any:
            encoded.append(text)
            return backend.encode(text, add_special_tokens=add_special_tokens)

        def encode_batch_fast(self, texts: list[str], add_special_tokens: bool) -> Any:
            encoded.extend(texts)
            return backend.encode_batch_fast(texts, add_special_tokens=add_special_tokens)

    preamble = "".join(f"Example {i}: the function returns the number of items in the list.\n" for i in range(60))
    past_preamble = len(backend.encode(preamble, add_special_tokens=False).ids) + 200
    monkeypatch.setattr(tiny, "_backend", Spy())
    for n, question in enumerate(("Question: what is it? " * 40, "Question: what does len() return? " * 40)):
        encoded.clear()
        text = preamble + question
        stream = tiny.stream(text, True)
        got = stream.read(past_preamble)
        assert got == token_bytes(backend.encode(text).ids)[: len(got)]
        chars = sum(len(t) for t in encoded)
        assert chars > len(preamble) if n == 0 else chars < 3 * 768  # the second: only windows past the preamble


def test_the_window_cache_stays_within_its_bound() -> None:
    tiny = HFTokenizer.from_dir(MODEL_DIR)
    tiny._max_window_chars = 10_000
    for i in range(60):
        text = f"{i} " + "The function returns the number of items in the list. " * 60
        tiny.stream(text, True).read(1 << 20)
        assert tiny._window_chars == sum(len(key) for key, _ in tiny._windows) <= 10_000
    assert len(tiny._windows) > 5  # it does remember
    whole = "x" * 20_000 + " y"  # one word longer than the bound: encoded, not remembered
    assert array("I", tiny.stream(whole, False).read(1 << 20)).tolist() == tiny._backend.encode(whole, add_special_tokens=False).ids
    assert tiny._window_chars <= 10_000


def test_tokenizers_without_proven_cuts_read_whole(tmp_path: Path) -> None:
    spec = json.loads((MODEL_DIR / "tokenizer.json").read_text())
    spec["pre_tokenizer"]["add_prefix_space"] = True  # a space before the text: cuts would add one each
    (tmp_path / "tokenizer.json").write_text(json.dumps(spec))
    prefixed = HFTokenizer.from_dir(tmp_path)
    assert not prefixed._stream_ok
    text = "The function returns the number of items. " * 100
    stream = prefixed.stream(text, True)
    assert array("I", stream.read(1)).tolist() == prefixed._backend.encode(text).ids and stream.done
