"""The served model's tokenizer gives the token ids a real vLLM 0.32 computed (captured), chat and
completion, BOS rules included; cutting prompts at added tokens never changes them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tokenizers import Tokenizer as RustTokenizer

from epp.contracts.kv_events import Stored
from epp.kvevents.decode import decode_message
from epp.tokenizer.hf import ChatTemplateError, HFTokenizer
from tests.kvevents.captures import frames, messages

DATA = Path(__file__).parents[1] / "data" / "vllm-0.32-cpu"
MODEL_DIR = DATA / "tiny-llama"
SPECIALS = ["<|begin_of_text|>", "<|end_of_text|>", "<|eot_id|>", "<|start_header_id|>", "<|end_header_id|>"]


def capture(name: str) -> Any:
    return json.loads((DATA / "captures" / name).read_text())


@pytest.fixture(scope="module")
def tiny() -> HFTokenizer:
    return HFTokenizer.from_dir(MODEL_DIR)


def engine_blocks() -> list[Stored]:
    """The first block of stores per captured message: seq 0 is the completion, seq 1 the chat."""
    out = []
    for message in messages("vllm_events1")[:2]:
        (event,) = decode_message(frames(message)).events
        assert isinstance(event, Stored)
        out.append(event)
    return out


def test_completion_ids_are_the_engines_bos_included(tiny: HFTokenizer) -> None:
    body = capture("req_completion.json")
    ids = tiny.encode(body["prompt"], add_special_tokens=True)
    assert len(ids) == capture("vllm_req_completion.resp")["usage"]["prompt_tokens"] == 644
    stored = engine_blocks()[0]
    assert ids[: len(stored.token_ids)] == list(stored.token_ids)
    assert ids[0] == 0 and ids[1] != 0  # one BOS, from the post-processor


def test_chat_ids_are_the_engines_with_the_templates_single_bos(tiny: HFTokenizer) -> None:
    body = capture("req_chat.json")
    text = tiny.render_chat(body["messages"], body)
    assert text.startswith("<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n")
    assert text.endswith("<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n")  # generation prompt
    ids = tiny.encode(text, add_special_tokens=False)  # chat: the template wrote the BOS
    assert len(ids) == capture("vllm_req_chat.resp")["usage"]["prompt_tokens"] == 660
    stored = engine_blocks()[1]
    assert ids[: len(stored.token_ids)] == list(stored.token_ids)
    assert tiny.encode(text, add_special_tokens=True)[:2] == [0, 0]  # what a wrong BOS rule would send


def test_tokenize_capture(tiny: HFTokenizer) -> None:
    assert tiny.encode("Return the number of items.") == capture("vllm_tokenize.json")["tokens"]


def test_chat_options_follow_the_request(tiny: HFTokenizer) -> None:
    msgs = [{"role": "user", "content": [{"type": "text", "text": " a "}, {"type": "text", "text": "b"}]}]
    assert tiny.render_chat(msgs, {"add_generation_prompt": False}) == (
        "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\na \nb<|eot_id|>"
    )  # text parts joined by newlines, then the template's trim
    partial = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "Once upon"}]
    assert tiny.render_chat(partial, {"continue_final_message": True}).endswith("<|end_header_id|>\n\nOnce upon")
    custom = {"chat_template": "{{ greeting }}{% for m in messages %}[{{ m.content }}]{% endfor %}",
              "chat_template_kwargs": {"greeting": "Hey"}}  # fmt: skip
    assert tiny.render_chat([{"role": "user", "content": "x"}], custom) == "Hey[x]"
    with pytest.raises(ChatTemplateError):
        tiny.render_chat([{"role": "user", "content": "x"}], {"chat_template": "{{ raise_exception('no') }}"})
    with pytest.raises(ChatTemplateError):
        tiny.render_chat([{"content": "no role"}])


def test_a_model_without_a_template_cannot_render_chat(tmp_path: Path) -> None:
    (tmp_path / "tokenizer.json").write_bytes((MODEL_DIR / "tokenizer.json").read_bytes())
    bare = HFTokenizer.from_dir(tmp_path)
    assert not bare.has_chat_template
    with pytest.raises(ChatTemplateError, match="no chat template"):
        bare.render_chat([{"role": "user", "content": "x"}])
    with pytest.raises(ValueError, match="no tokenizer.json"):
        HFTokenizer.from_dir(tmp_path / "missing")


_PAIR: list[tuple[HFTokenizer, RustTokenizer]] = []


def _pair() -> tuple[HFTokenizer, RustTokenizer]:
    if not _PAIR:
        _PAIR.append((HFTokenizer.from_dir(MODEL_DIR), RustTokenizer.from_file(str(MODEL_DIR / "tokenizer.json"))))
    return _PAIR[0]


@settings(max_examples=80, deadline=None)
@given(st.lists(st.one_of(st.sampled_from(SPECIALS), st.text(max_size=40)), max_size=12), st.booleans())
def test_cutting_at_added_tokens_equals_whole_text_encoding(parts: list[str], special: bool) -> None:
    tiny, whole = _pair()
    text = "".join(parts)
    assert tiny.encode(text, special) == whole.encode(text, add_special_tokens=special).ids


class _Spy:
    """Stands in for the Rust tokenizer and records every text it is asked to encode."""

    def __init__(self, backend: RustTokenizer) -> None:
        self.backend = backend
        self.texts: list[str] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self.backend, name)

    def encode_batch_fast(self, texts: list[str], add_special_tokens: bool) -> Any:
        self.texts.extend(texts)
        return self.backend.encode_batch_fast(texts, add_special_tokens=add_special_tokens)

    def encode(self, text: str, add_special_tokens: bool) -> Any:
        self.texts.append(text)
        return self.backend.encode(text, add_special_tokens=add_special_tokens)


def test_a_shared_system_prompt_is_encoded_once(monkeypatch: pytest.MonkeyPatch) -> None:
    tiny = HFTokenizer.from_dir(MODEL_DIR)
    spy = _Spy(tiny._backend)
    monkeypatch.setattr(tiny, "_backend", spy)
    system = {"role": "system", "content": "You answer questions about the standard library. " * 40}
    for question in ("What is os.path?", "What is shutil?"):
        tiny.encode(tiny.render_chat([system, {"role": "user", "content": question}]), add_special_tokens=False)
    assert sum("You answer" in text for text in spy.texts) == 1
    assert "\n\nWhat is shutil?" in spy.texts


def test_a_new_prompt_reuses_the_ids_of_the_preamble_it_shares(monkeypatch: pytest.MonkeyPatch) -> None:
    """Completion prompts sharing a long preamble: the second one encodes only (about) its new part,
    with exactly the ids of encoding it whole."""
    tiny = HFTokenizer.from_dir(MODEL_DIR)
    assert tiny._reuse
    whole = RustTokenizer.from_file(str(MODEL_DIR / "tokenizer.json"))
    spy = _Spy(tiny._backend)
    monkeypatch.setattr(tiny, "_backend", spy)
    preamble = "".join(f"Example {i}: the function returns the number of items in the list.\n" for i in range(60))
    for question in ("Question: what is it?", "Question: what does len() return?", "Question: and sorted()?\n\n  Answer:"):
        text = preamble + question
        assert tiny.encode(text) == whole.encode(text).ids
    # the first is encoded plainly, the second records where the preamble's words start, the third reuses
    assert len(spy.texts[-1]) < 2 * 512  # only the tail after the last checkpoint was encoded again


def test_segmenting_is_off_where_it_would_change_ids(tmp_path: Path) -> None:
    """An added token that strips the spaces next to it makes pieces depend on their neighbours."""
    spec = json.loads((MODEL_DIR / "tokenizer.json").read_text())
    for token in spec["added_tokens"]:
        token["lstrip"] = token["rstrip"] = True
    (tmp_path / "tokenizer.json").write_text(json.dumps(spec))
    stripping = HFTokenizer.from_dir(tmp_path)
    text = "a <|eot_id|> b"
    assert stripping._split is None
    assert stripping.encode(text) == RustTokenizer.from_file(str(tmp_path / "tokenizer.json")).encode(text).ids


_WORDS = st.sampled_from(["the", " list", "  ", "\n", "\n\n", ".", ",", " items", "42", "é", "\t", " returns", "(x)", "'s"])


@settings(max_examples=40, deadline=None)
@given(st.lists(_WORDS, min_size=300, max_size=700), st.lists(_WORDS, max_size=40), st.integers(0, 400))
def test_reusing_a_remembered_prefix_equals_whole_text_encoding(shared: list[str], tail: list[str], cut: int) -> None:
    tiny, whole = _pair()
    first = "".join(shared)
    second = "".join(shared[: len(shared) - cut]) + "".join(tail)
    tiny._forget()
    for text in (first, first + " ", second):  # plainly, with reuse points, reusing them
        assert tiny.encode(text, False) == whole.encode(text, add_special_tokens=False).ids
