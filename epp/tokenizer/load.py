"""Which tokenizer a tokenizer spec names: ``auto`` (each served model's own, ``source``), ``sim``
(the simulator's stand-in), a model folder or Hugging Face id, or ``package.module:factory``.

Spec loading lives here, beside the implementations, so scheduling depends only on the contract
(``epp.tokenizer.protocol``) and on this function. See ``epp.scheduling.prefix.tokens`` for how a
request's prompt is turned into token ids with the tokenizer chosen.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping, Sequence
from typing import Any, cast

from epp._util import byte_tokenizer
from epp.tokenizer.protocol import Tokenizer, TokenizerSource

__all__ = ["AUTO_TOKENIZER", "SIM", "SIM_TOKENIZER", "FixedTokenizer", "SimTokenizer", "load_tokenizer", "load_tokenizers"]

SIM_TOKENIZER = "sim"
AUTO_TOKENIZER = "auto"


class SimTokenizer:
    """``epp._util.byte_tokenizer`` (the simulator's) behind the protocol (so it can be swapped like any other)."""

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return byte_tokenizer.encode(text)

    def render_chat(self, messages: Sequence[Mapping[str, Any]], options: Mapping[str, Any] | None = None) -> str:
        return byte_tokenizer.render_chat(messages)


SIM = SimTokenizer()


class FixedTokenizer:
    """One tokenizer for every model."""

    def __init__(self, tokenizer: Tokenizer) -> None:
        self.tokenizer = tokenizer

    def for_model(self, model: str) -> Tokenizer:
        return self.tokenizer


def load_tokenizer(spec: str) -> Tokenizer:
    """``sim``, ``package.module:factory`` naming a zero-argument callable returning a ``Tokenizer``,
    or a model folder / Hugging Face id (found locally or in the offline cache, never downloaded here).
    Raises ``ValueError`` with the reason when the spec cannot be loaded."""
    if spec == SIM_TOKENIZER:
        return SIM
    module_name, sep, attr = spec.partition(":")
    if not sep:
        from epp.tokenizer.source import load_model_tokenizer

        return load_model_tokenizer(spec)
    if not module_name or not attr:
        raise ValueError(f"must be {AUTO_TOKENIZER!r}, {SIM_TOKENIZER!r}, a model folder or id, or 'package.module:factory', got {spec!r}")
    try:
        factory = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as err:
        raise ValueError(f"cannot load tokenizer {spec!r}: {err}") from None
    made = factory()
    if not callable(getattr(made, "encode", None)) or not callable(getattr(made, "render_chat", None)):
        raise ValueError(f"tokenizer {spec!r} must provide encode(text) and render_chat(messages)")
    return cast(Tokenizer, made)


def load_tokenizers(spec: str) -> TokenizerSource:
    """``load_tokenizer``'s specs for every model, or ``auto``: each model's own (``ModelTokenizers``)."""
    if spec == AUTO_TOKENIZER:
        from epp.tokenizer.source import ModelTokenizers

        return ModelTokenizers(fallback=SIM)
    return FixedTokenizer(load_tokenizer(spec))
