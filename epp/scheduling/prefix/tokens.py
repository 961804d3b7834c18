"""A request's prompt as the engine's token ids, so the picker hashes the blocks an engine caches.

The precise prefix index is keyed by chained hashes of token-id blocks (what engines report in
``BlockStored.token_ids``). The request side must produce the same token ids the engine will: token
ids the request carries are used as they are; text is tokenized by a ``Tokenizer`` — chat messages
rendered by the model's chat template and encoded without the tokenizer's special tokens, completion
prompts encoded with them (vLLM's defaults; a request's ``add_special_tokens`` overrides both).

Which tokenizer (the ``tokenizer`` parameter, ``epp.tokenizer.load.load_tokenizers``):

* ``auto`` (default) — per request, the served model's own tokenizer, found from the model name the
  way the engine finds it (``epp.tokenizer.source``); a model epp cannot find gets the ``sim`` one,
  with one warning;
* ``sim`` — the simulator's stand-in tokenizer and chat template (``epp._util.byte_tokenizer``), which
  matches ``epp sim`` exactly;
* a model folder or Hugging Face id — that model's tokenizer for every request;
* ``package.module:factory`` — a zero-argument callable returning a ``Tokenizer``.

A tokenizer that can ``stream`` (the served model's) is read lazily (``engine_block_stream``): the
producer hashes a prompt's blocks only while some endpoint holds all of them, and the rest when the
request's first response arrives (``ApproxPrefixCacheProducer.learn_tail``).

With a mismatched tokenizer the hashes never match; the precise index notices (key agreement, per
prompt kind) and matches those requests in its approximate fallback.
"""

from __future__ import annotations

import sys
from typing import cast

from epp._util.hashing import ChainMemo, chain_bytes, token_bytes
from epp._util.offload import Split
from epp.request import LLMRequest, RequestKind
from epp.scheduling.prefix.hashing import hashed_once, request_seed
from epp.contracts.kv_events import CHAT, COMPLETION
from epp.tokenizer.load import SimTokenizer
from epp.tokenizer.protocol import StreamingTokenizer, Tokenizer, TokenReader


def prompt_kind(request: LLMRequest) -> str:
    """``CHAT`` for a prompt a chat template renders, else ``COMPLETION`` (key agreement is per kind)."""
    if request.prompt_token_ids is None and request.kind is RequestKind.CHAT_COMPLETIONS:
        return CHAT
    return COMPLETION


def _prompt(request: LLMRequest, tokenizer: Tokenizer) -> tuple[str, bool] | list[int]:
    """The prompt as the engine will see it: text still to tokenize (and whether the tokenizer's
    special tokens are added), or token ids."""
    if request.prompt_token_ids is not None:
        return request.prompt_token_ids
    body = request.body or {}
    special = body.get("add_special_tokens")
    try:
        if request.kind is RequestKind.CHAT_COMPLETIONS and isinstance(body.get("messages"), list):
            return tokenizer.render_chat(body["messages"], body), special is True
        prompt = body.get("prompt")
        if isinstance(prompt, list) and len(prompt) == 1:
            prompt = prompt[0]
        if isinstance(prompt, str):
            return prompt, special is not False
        if isinstance(prompt, list) and all(isinstance(t, int) and not isinstance(t, bool) for t in prompt):
            return list(prompt)
    except ValueError:  # a malformed chat message or a template error: the engine will reject it too
        return []
    return (request.prompt_bytes.decode("utf-8", errors="replace"), special is not False) if request.prompt_bytes else []


def prompt_token_ids(request: LLMRequest, tokenizer: Tokenizer) -> list[int]:
    """The token ids the engine will see for ``request``; [] when it has no usable prompt (then
    nothing matches, which is the honest answer)."""
    prompt = _prompt(request, tokenizer)
    return tokenizer.encode(*prompt) if isinstance(prompt, tuple) else prompt


def engine_block_hashes(
    request: LLMRequest, tokenizer: Tokenizer, block_tokens: int, max_blocks: int, memo: ChainMemo | None = None
) -> list[int]:
    """Chained hashes of the prompt's full token blocks, seeded with the target model (a LoRA
    adapter's name when the request targets one) and ``cache_salt``, as ``PreciseIndex`` keys engine blocks (``memo``:
    segments hashed recently are not hashed again).

    With the ``sim`` tokenizer a text prompt's packed token blocks *are* its NUL-padded UTF-8 bytes
    (a token is 4 bytes read little-endian, packed back little-endian), so the bytes are hashed
    directly: as cheap as the approximate producer's byte blocks, without a list of ints. Tokenized and
    hashed once per request and tokenizer (``hashed_once``)."""
    seed = request_seed(request)
    return hashed_once(
        request, ("engine", id(tokenizer), block_tokens, max_blocks, seed),
        (tokenizer, request.body, request.prompt_token_ids, request.prompt_bytes),
        lambda: _engine_block_hashes(request, tokenizer, block_tokens, max_blocks, seed, memo),
    )


def _engine_block_hashes(
    request: LLMRequest, tokenizer: Tokenizer, block_tokens: int, max_blocks: int, seed: int, memo: ChainMemo | None
) -> list[int]:
    prompt = _prompt(request, tokenizer)
    block_bytes = block_tokens * 4
    if isinstance(prompt, tuple) and isinstance(tokenizer, SimTokenizer) and sys.byteorder == "little":
        data = prompt[0].encode("utf-8", errors="replace")
        pad = -len(data) % 4
        if pad and (len(data) + pad) % block_bytes == 0:  # the padding completes the last block (else it is
            data += b"\0" * pad  # dropped with the partial block: no copy of a long prompt for it)
    else:
        tokens = tokenizer.encode(*prompt) if isinstance(prompt, tuple) else prompt
        data = token_bytes(tokens[: block_tokens * max_blocks])
    return chain_bytes(data[: block_bytes * max_blocks], block_bytes, seed, memo)


class BlockHashTail:
    """The rest of a prompt's engine block hashes, computed as the prefix index asks for them
    (``PrefixMatch.tail``): a prompt whose first blocks no endpoint holds is hashed — and tokenized —
    only that far on the pick path. Equal to ``engine_block_hashes`` once read to the end."""

    __slots__ = ("_block_bytes", "_memo", "_parent", "_pending", "_room", "_stream")

    def __init__(self, stream: TokenReader, seed: int, block_tokens: int, max_blocks: int, memo: ChainMemo | None) -> None:
        self._stream = stream
        self._parent = seed
        self._block_bytes = block_tokens * 4
        self._room = max_blocks
        self._memo = memo
        self._pending = b""  # ids read past the last full block

    @property
    def done(self) -> bool:
        return self._room == 0 or (self._stream.done and len(self._pending) < self._block_bytes)

    def next(self, blocks: int) -> list[int]:
        """At least ``blocks`` more hashes (fewer only at the prompt's end or the block limit), more
        where the stream read more (what its caches held)."""
        if self.done:
            return []
        if blocks >= self._room:
            return self.rest().run()
        want = blocks * self._block_bytes - len(self._pending)
        return self._hashed(self._stream.read(max(1, -(-want // 4))))

    def rest(self) -> Split[list[int]]:
        """All the hashes still to come, cut where the tokenizer's encoding may run on another thread
        (``TokenReader.rest``); hashed in the finishing step (the chain memo is the owner's)."""
        if self.done:
            return Split.ready([])
        needed = self._room * (self._block_bytes // 4) - len(self._pending) // 4  # ids up to the block limit
        return self._stream.rest(needed).then(self._hashed)

    def _hashed(self, read: bytes) -> list[int]:
        """The hashes of the full blocks of what was pending plus ``read`` (all of it: hashing costs far
        less than reading), up to the block limit."""
        bb = self._block_bytes
        data = self._pending + read
        full = min(len(data) // bb, self._room) * bb
        hashes = chain_bytes(data[:full], bb, self._parent, self._memo) if full else []
        self._pending = data[full:]
        self._room -= len(hashes)
        if hashes:
            self._parent = hashes[-1]
        return hashes

    def estimated_blocks(self) -> int:
        """Blocks still to come, estimated from the text left (``TokenReader.tokens_left``)."""
        if self.done:
            return 0
        left = len(self._pending) // 4 + self._stream.tokens_left()
        return min(self._room, left // (self._block_bytes // 4))


def engine_block_stream(
    request: LLMRequest, tokenizer: Tokenizer, block_tokens: int, max_blocks: int, memo: ChainMemo | None = None
) -> tuple[list[int], BlockHashTail | None]:
    """``engine_block_hashes`` read lazily where the tokenizer can stream a text prompt: no hashes yet
    and the tail that computes them; otherwise all of them and no tail."""
    if isinstance(tokenizer, SimTokenizer) or not callable(getattr(tokenizer, "stream", None)):  # not isinstance:
        return engine_block_hashes(request, tokenizer, block_tokens, max_blocks, memo), None  # slow on a Protocol
    prompt = _prompt(request, tokenizer)
    if not isinstance(prompt, tuple):
        return engine_block_hashes(request, tokenizer, block_tokens, max_blocks, memo), None
    stream = cast(StreamingTokenizer, tokenizer).stream(*prompt)
    return [], BlockHashTail(stream, request_seed(request), block_tokens, max_blocks, memo)
