from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from epp._util import byte_tokenizer as tokenizer


@given(st.text(alphabet=st.characters(blacklist_characters="\0", blacklist_categories=("Cs",))))
def test_round_trip(text: str) -> None:
    assert tokenizer.decode(tokenizer.encode(text)) == text


@given(st.text(min_size=8), st.text(), st.text())
def test_equal_prefixes_give_equal_token_prefixes(prefix: str, a: str, b: str) -> None:
    full = len(prefix.encode()) // 4
    assert tokenizer.encode(prefix + a)[:full] == tokenizer.encode(prefix + b)[:full]


def test_about_four_characters_per_token_and_bad_ids() -> None:
    assert len(tokenizer.encode("x" * 400)) == 100
    assert tokenizer.decode([0xFFFFFFFF])  # not UTF-8: replaced, never raised
    with pytest.raises(ValueError):
        tokenizer.decode([-1])


def test_chat_template() -> None:
    text = tokenizer.render_chat(
        [{"role": "user", "content": [{"type": "text", "text": "a"}]}, {"role": "x", "content": None}]
    )
    assert text == "<|user|>\na\n<|x|>\n\n<|assistant|>\n"
    with pytest.raises(ValueError):
        tokenizer.render_chat([{"role": "user", "content": 3}])


def test_lone_surrogates_do_not_crash_encoding() -> None:
    assert tokenizer.decode(tokenizer.encode("a\ud800b")) == "a?b"
