"""A model folder's tokenizer and chat template, applied the way vLLM applies them.

The folder is what vLLM loads: ``tokenizer.json`` (encoded by Hugging Face's Rust ``tokenizers``,
the same code transformers' fast tokenizers run), ``tokenizer_config.json`` (special tokens, the chat
template) and, when present, ``chat_template.jinja`` (preferred, as transformers does) or
``chat_template.json``. Rules that decide the token ids, all as vLLM 0.32 does:

* **chat** (``/v1/chat/completions``): the template is rendered with ``jinja2`` in transformers'
  sandboxed environment (``trim_blocks``, ``lstrip_blocks``, ``tojson``, ``raise_exception``,
  ``strftime_now``) with ``messages``, ``tools``, ``documents``, ``add_generation_prompt`` (default
  true), the special tokens (``bos_token`` …) and the request's ``chat_template_kwargs``; text parts of
  a list ``content`` are joined with newlines; then the text is encoded **without** the tokenizer's
  special tokens (``add_special_tokens`` defaults to false for chat: the template writes the BOS);
* **completion** (``/v1/completions``): the prompt is encoded **with** them (the post-processor adds
  the BOS), unless the request says ``add_special_tokens: false``.

**Cost.** Added tokens (``<|start_header_id|>``, ``<|eot_id|>`` …) are matched before any
normalisation or pre-tokenisation, so the text between two of them encodes on its own. A prompt is
cut there and each piece's ids are remembered (bounded by characters held): a system prompt or an
earlier turn repeated by later requests is encoded once. A long piece that is new but starts like a
remembered one (a completion prompt with a shared preamble, a message that grew) reuses the ids of
the shared part up to a pre-tokenizer word boundary found from the remembered encoding (checkpoints
every ``_CHUNK`` characters, ``_MARGIN`` characters before the end of what is known to be shared, never
inside a whitespace run) and encodes only the rest. Both are checked at load time — the ids must
equal whole-text encoding on probe strings and a rendered sample chat — and turned off for tokenizers
where they would not hold (added tokens that strip neighbouring spaces, a pre-tokenizer that marks
the start of the text).

**Reading lazily** (``stream``, what the precise producer uses): a prompt's ids front to back, only
as far as the reader asks — the prefix index stops at the first block no endpoint holds, so a new
prompt costs one window of encoding on the pick path instead of all of it. Long pieces are cut at
pre-tokenizer words proven not to change the ids (``TokenStream``); windows are remembered by their
text (``_WINDOW_CACHE_CHARS`` characters, about 7 MB), so a long preamble is encoded once. What is
left after the lookups (``TokenStream.rest``) is one batch encode that touches no epp state and
releases the GIL, split from its bookkeeping (``epp._util.offload.Split``) so ``epp serve`` runs it on
a worker thread, off the event loop.
"""

from __future__ import annotations

import bisect
import json
import os
import re
import sys
from array import array
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import jinja2
import jinja2.ext
import jinja2.sandbox

# A pick encodes one prompt on the event loop's thread; the Rust library would hand even that to its
# thread pool, which on a busy host costs more waiting than it saves (measured: bench/RESULTS.md).
# Read when the library first encodes; an explicit setting is kept.
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from tokenizers import Encoding  # noqa: E402 - after the parallelism default
from tokenizers import Tokenizer as RustTokenizer  # noqa: E402

from epp._util.hashing import token_bytes
from epp._util.offload import Split

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "chat_template.json",
                   "special_tokens_map.json")  # fmt: skip
"""The files of a model folder tokenization reads (all a Hugging Face download needs to fetch)."""

_CHUNK = 512  # characters between reuse checkpoints of a long piece
_MARGIN = 64  # a reused prefix ends at least this far before the end of the text known to be shared
_MAX_SEEN = 65536  # chunk hashes remembered to notice text that recurs
_WINDOW = 768  # characters a stream encodes per step of a long piece (about 120-190 tokens)
_WINDOW_MARGIN = 16  # a stream's cut is at least this far before the end of the window it encoded
_CACHED_READ = 2048  # ids a stream read may add from its caches past what was asked
_WINDOW_CACHE_CHARS = 4_000_000  # characters of windows remembered (with their ids: about 7 MB)
_U32 = next(code for code in "IL" if array(code).itemsize == 4)
_SPECIAL_KEYS = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token")


class ChatTemplateError(ValueError):
    """The chat cannot be rendered (no template, a template error, malformed messages)."""


def _tojson(value: Any, ensure_ascii: bool = False, indent: int | None = None, separators: Any = None,
            sort_keys: bool = False) -> str:  # fmt: skip
    """transformers' ``tojson`` filter: no HTML escaping, unlike jinja2's built-in one."""
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _raise_exception(message: str) -> None:
    raise jinja2.exceptions.TemplateError(message)


def _environment() -> jinja2.sandbox.ImmutableSandboxedEnvironment:
    env = jinja2.sandbox.ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols]
    )
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    return env


def _token_text(value: Any) -> str | None:
    """A special token from tokenizer_config.json: a string or an AddedToken dict."""
    if isinstance(value, str):
        return value
    content = value.get("content") if isinstance(value, Mapping) else None
    return content if isinstance(content, str) else None


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    data = json.loads(path.read_text(encoding="utf-8"))
    return data if isinstance(data, dict) else {}


def _templates(folder: Path, config: Mapping[str, Any]) -> dict[str, str]:
    """Named chat templates: ``chat_template.jinja`` beats ``tokenizer_config.json``'s (a string or a
    list of ``{name, template}``), which beats ``chat_template.json``."""
    jinja_file = folder / "chat_template.jinja"
    if jinja_file.is_file():
        return {"default": jinja_file.read_text(encoding="utf-8")}
    raw = config.get("chat_template")
    if raw is None:
        raw = _read_json(folder / "chat_template.json").get("chat_template")
    if isinstance(raw, str):
        return {"default": raw}
    if isinstance(raw, list):
        return {t["name"]: t["template"] for t in raw if isinstance(t, Mapping) and isinstance(t.get("name"), str)
                and isinstance(t.get("template"), str)}  # fmt: skip
    return {}


def _content_text(content: Any) -> Any:
    """vLLM's "string" content format: a list of parts becomes their texts joined by newlines."""
    if isinstance(content, list):
        texts = [p.get("text") for p in content if isinstance(p, Mapping) and p.get("type") in ("text", "input_text")]
        return "\n".join(t for t in texts if isinstance(t, str))
    return content


def _conversation(messages: Sequence[Any]) -> list[dict[str, Any]]:
    """Messages as vLLM hands them to the template: text content, tool-call arguments parsed."""
    out: list[dict[str, Any]] = []
    for message in messages:
        if not isinstance(message, Mapping) or not isinstance(message.get("role"), str):
            raise ChatTemplateError("each message needs a string 'role'")
        m = dict(message)
        if "content" in m:
            m["content"] = _content_text(m["content"])
        calls = m.get("tool_calls")
        if isinstance(calls, list):
            m["tool_calls"] = [_parsed_call(c) for c in calls]
        out.append(m)
    return out


def _parsed_call(call: Any) -> Any:
    function = call.get("function") if isinstance(call, Mapping) else None
    if not isinstance(function, Mapping) or not isinstance(function.get("arguments"), str):
        return call
    try:
        arguments = json.loads(function["arguments"])
    except ValueError:
        return call
    return {**call, "function": {**function, "arguments": arguments}}


@dataclass(slots=True)
class _Piece:
    """A remembered piece: its ids and, per full ``_CHUNK`` of text, (chained hash of the text up to
    that checkpoint, token index and character offset of a word boundary before it) — or nothing
    where the piece is too short to reuse from. The ids are a 4-byte ``array``, not a list: the
    collector never walks an array's items (a full piece cache holds millions of ids; as lists, every
    full collection of ``epp serve`` walked them: 7.4 ms per collection for 2.6M ids, bench/RESULTS.md)."""

    ids: array[int]
    marks: list[tuple[int, int, int]]


def _chunk_hashes(text: str) -> list[int]:
    """Chained hashes of ``text``'s full ``_CHUNK``-character chunks: equal leading hashes, equal prefixes
    (confirmed by comparing the text before reuse)."""
    out: list[int] = []
    h = 0
    for start in range(0, len(text) - _CHUNK + 1, _CHUNK):
        h = hash((h, text[start : start + _CHUNK]))
        out.append(h)
    return out


_CHAR_CLASS = re.compile(r"\[(?:\\.|[^\]\\])*\]")
_LOOKS_AROUND = re.compile(r"\(\?<[=!]|\\[AzZbBG]|[\^$]")  # lookbehind, anchors, word boundaries


def _splits_locally(component: Mapping[str, Any] | None) -> bool:
    """Whether a pre-tokenizer splits the text after one of its split points as it splits that text on
    its own: regex splits that look neither behind nor at anchors, byte-level mapping without an added
    prefix space (GPT-2, Llama 3, Qwen 2, DeepSeek). Metaspace (which marks the start of the text) and
    the rest are not claimed."""
    if component is None:
        return False
    kind = component.get("type")
    if kind == "Sequence":
        return all(_splits_locally(c) for c in component.get("pretokenizers", ()))
    if kind == "ByteLevel":
        return component.get("add_prefix_space") is False
    if kind == "Digits":
        return True
    if kind == "Split" and not component.get("invert", False):
        pattern = component.get("pattern")
        if isinstance(pattern, Mapping) and isinstance(pattern.get("String"), str):
            return True
        regex = pattern.get("Regex") if isinstance(pattern, Mapping) else None
        return isinstance(regex, str) and not _LOOKS_AROUND.search(_CHAR_CLASS.sub("", regex))
    return False


def _streamable(backend: RustTokenizer) -> bool:
    """Whether ``TokenStream``'s cuts provably keep ids (see ``TokenStream``): BPE without dropout, a
    pre-tokenizer that splits locally, and no normalizer but NFC (which a cut before an ASCII character
    cannot change)."""
    state = json.loads(backend.pre_tokenizer.__getstate__()) if backend.pre_tokenizer is not None else None
    normalizer = json.loads(backend.normalizer.__getstate__()) if backend.normalizer is not None else None
    model = backend.model
    return (
        type(model).__name__ == "BPE" and getattr(model, "dropout", None) is None
        and _splits_locally(state) and (normalizer is None or normalizer.get("type") == "NFC")
    )  # fmt: skip


def _unpacked(data: bytes) -> array[int]:
    """``token_bytes`` undone."""
    ids = array(_U32)
    ids.frombytes(data)
    if sys.byteorder != "little":
        ids.byteswap()
    return ids


def _packed(ids: array[int]) -> bytes:
    """``token_bytes`` of a piece's ids (a copy only on a big-endian host)."""
    if sys.byteorder == "little":
        return ids.tobytes()
    return token_bytes(ids)


def _safe_cut(window: str, enc: Encoding) -> tuple[bytes, int] | None:
    """The packed ids of ``window`` (a text starting at a safe cut) up to its last safe cut
    (``TokenStream``), and the characters they cover; None when it has none."""
    words, offsets = enc.word_ids, enc.offsets
    if not words:
        return None
    last, limit = words[-1], len(window) - _WINDOW_MARGIN
    at = len(words) - 1
    while at > 0:
        begin = offsets[at][0]
        word = words[at]
        if (word is not None and last is not None and word < last - 1 and begin <= limit and word != words[at - 1]
                and window[begin].isascii() and not window[begin - 1].isspace()):  # fmt: skip
            return token_bytes(enc.ids[:at]), begin
        at -= 1
    return None


class TokenStream:
    """One text's token ids, encoded front to back as the reader asks for more, as packed uint32
    (``epp._util.hashing.token_bytes``' layout): a reader that needs only the start — the prefix
    index, which stops at the first block no endpoint holds — never pays for the rest.

    The text is cut at added tokens (as ``HFTokenizer.encode``); a remembered piece costs a lookup, a
    short new piece is encoded whole (and remembered). A long new piece is encoded a window
    (``_WINDOW`` characters) at a time: the window's ids are kept up to a pre-tokenizer word that starts
    at least ``_WINDOW_MARGIN`` characters before its end and before the window's last two words, whose
    first character is ASCII and not preceded by whitespace, and the next window starts there. That
    keeps the whole text's ids because the pre-tokenizer's words before that point depend only on
    characters inside the window (its patterns look at most one character ahead, never behind), the
    model encodes each word on its own, and NFC cannot join across an ASCII character; tokenizers
    where that is not known (``_streamable``) or a load-time probe disagrees get one whole encode.
    Windows are remembered by their text (bounded by characters held), so a long preamble shared by
    many prompts is encoded once: the windows of two texts agree while the texts do."""

    __slots__ = ("_chars", "_i", "_owner", "_part_read", "_parts", "_pos", "_read_chars", "_special", "_tokens", "done")

    def __init__(self, owner: HFTokenizer, text: str, add_special_tokens: bool) -> None:
        self._owner = owner
        self._chars = len(text)
        self._special = add_special_tokens
        self._read_chars = 0
        self._tokens = 0
        self._i = -1  # -1: the post-processor's leading ids are still to come
        self._pos = 0  # characters of parts[i] read
        self._part_read: list[bytes] = []  # ids of parts[i] read so far
        self.done = False
        whole = not owner._stream_ok or (add_special_tokens and owner._around is None) or (
            owner._split is None and bool(owner._added))  # fmt: skip
        self._parts = [text] if whole or owner._split is None else owner._split.split(text)
        if whole:
            self._i = -2  # one ``HFTokenizer.encode`` (its piece cache still applies)

    def tokens_left(self) -> int:
        """About how many ids are still to read: the rest of the text at the rate seen so far (4
        characters per token before anything was read)."""
        if self.done:
            return 0
        rest = self._chars - self._read_chars
        rate = self._tokens / self._read_chars if self._read_chars else 0.25
        return round(rest * rate)

    def read(self, min_tokens: int) -> bytes:
        """At least ``min_tokens`` more ids (fewer only at the end of the text), and then, up to four
        times as many (at least ``_CACHED_READ``), those that cost no encoding (added tokens, remembered
        pieces and windows); b"" once all were read."""
        out: list[bytes] = []
        got = 0
        most = max(4 * min_tokens, _CACHED_READ)
        while not self.done and (got < min_tokens or (got < most and self._next_is_remembered())):
            chunk = self._step()
            out.append(chunk)
            got += len(chunk) // 4
        self._tokens += got
        return b"".join(out)

    def _next_is_remembered(self) -> bool:
        owner, parts, i = self._owner, self._parts, self._i
        if i < 0 or i >= len(parts) or i % 2:
            return i != -2  # a frame or an added token; -2: the whole text, unencoded
        part, pos = parts[i], self._pos
        if pos == 0 and (not part or part in owner._pieces):
            return True
        if pos == 0 and len(part) <= 2 * owner._window:
            return False
        window = part[pos : pos + owner._window]
        return (window, pos + len(window) >= len(part)) in owner._windows

    def read_all(self) -> bytes:
        """All the ids not read yet (``rest``, both steps now)."""
        return self._all().run() if not self.done else b""

    def rest(self, limit: int | None = None) -> Split[bytes]:
        """The ids not read yet — all of them, or at least ``limit`` where that is less — as a
        ``Split``: what must be encoded is encoded by ``compute``, which touches only the Rust tokenizer
        (its batch encode releases the GIL), so it may run on another thread; the finishing step
        assembles the ids and remembers the new pieces (long ones too, so a later prompt repeating one —
        an earlier turn — finds it in one lookup). The stream must not be read between the two steps.

        All: the rest of the piece being read in one call (no window cuts, no offsets: about a quarter
        cheaper), the pieces after it that are not remembered, each whole (the text whole if nothing
        was read). With a ``limit`` well below what the piece being read still holds (a prefix index
        that matches only the first blocks of a long prompt), that piece is read on in windows cut as
        ``read`` cuts them, sized for what is still needed, until ``limit`` ids were read."""
        owner, parts = self._owner, self._parts
        if self.done:
            return Split.ready(b"")
        i, pos = self._i, self._pos
        if limit is not None and 0 <= i < len(parts) and i % 2 == 0 and not (pos == 0 and parts[i] in owner._pieces):
            rate = self._read_chars / self._tokens if self._tokens else 4.0  # characters per token so far
            left = len(parts[i]) - pos
            if left > 2 * owner._window and left > 2 * limit * rate:
                return self._windows_up_to(limit, rate)
        return self._all()

    def _windows_up_to(self, limit: int, rate: float) -> Split[bytes]:
        """``rest(limit)`` inside one long piece: windows of it until ``limit`` ids were read; if the piece
        ends first, everything after it too (as ``_all``)."""
        i, part, backend, window_size = self._i, self._parts[self._i], self._owner._backend, self._owner._window
        text = part[self._pos :]
        after_batch, after_finish = self._all_from(i + 1)

        def encode() -> tuple[list[bytes], int, list[bytes]]:
            chunks: list[bytes] = []
            used = got = 0
            while got < limit and used < len(text):
                size = int((limit - got) * rate * 1.25) + window_size
                window = text[used : used + size]
                cut = None
                if used + size < len(text):
                    cut = _safe_cut(window, backend.encode_batch([window], add_special_tokens=False)[0])
                if cut is None:  # the last window, or one without a safe cut: the rest of the piece
                    cut = token_bytes(backend.encode_batch_fast([text[used:]], add_special_tokens=False)[0].ids), len(text) - used
                chunks.append(cut[0])
                used += cut[1]
                got += len(cut[0]) // 4
            return chunks, used, after_batch() if used == len(text) else []

        def finish(read: tuple[list[bytes], int, list[bytes]]) -> bytes:
            chunks, used, after = read
            data = b"".join(chunks)
            self._tokens += len(data) // 4
            self._read_chars += used
            if used < len(text):
                self._pos += used
                self._part_read.extend(chunks)
                return data
            self._owner._keep_piece(part, b"".join(self._part_read) + data)  # read to its end
            return data + after_finish(after)

        return Split.of(encode, finish)

    def _all(self) -> Split[bytes]:
        """``rest()``: every id not read yet."""
        owner, parts, i = self._owner, self._parts, self._i
        if i == -2:  # nothing read of a text read whole
            text, special, backend = parts[0], self._special, owner._backend

            def whole() -> bytes:
                return token_bytes(backend.encode_batch_fast([text], add_special_tokens=special)[0].ids)

            def finish_whole(data: bytes) -> bytes:
                self._read_chars, self._tokens, self.done = self._chars, self._tokens + len(data) // 4, True
                return data

            return Split.of(whole, finish_whole)
        if i == -1:
            frame = token_bytes(owner._around[0]) if self._special and owner._around else b""
            batch, finish = self._all_from(0)
            return Split.of(batch, lambda encoded: frame + finish(encoded))
        if i < len(parts) and i % 2 == 0 and self._pos:
            part, text, before = parts[i], parts[i][self._pos :], b"".join(self._part_read)
            batch, finish = self._all_from(i + 1)
            backend = owner._backend

            def encode() -> tuple[bytes, list[bytes]]:
                return token_bytes(backend.encode_batch_fast([text], add_special_tokens=False)[0].ids), batch()

            def finish_part(encoded: tuple[bytes, list[bytes]]) -> bytes:
                owner._keep_piece(part, before + encoded[0])  # a later prompt repeating it: one lookup
                self._read_chars += len(text)
                self._tokens += len(encoded[0]) // 4
                return encoded[0] + finish(encoded[1])

            return Split.of(encode, finish_part)
        batch, finish = self._all_from(i)
        return Split.of(batch, finish)

    def _all_from(self, start: int) -> tuple[Callable[[], list[bytes]], Callable[[list[bytes]], bytes]]:
        """Every id of ``parts[start:]`` and the closing frame: the encoding of the pieces not remembered
        (one batch; any thread) and the step that assembles them, remembers the new pieces and ends the
        stream (the owner's thread)."""
        owner, parts, special = self._owner, self._parts, self._special
        texts: dict[str, int] = {}  # text to encode → its index (a piece repeated is encoded once)
        out: list[bytes | int] = []  # ids known now, or the index of an encoded text
        for at in range(start, len(parts)):
            part = parts[at]
            if at % 2:
                out.append(token_bytes((owner._added[part],)))
            elif part:
                cached = owner._pieces.pop(part, None)
                if cached is None:
                    out.append(texts.setdefault(part, len(texts)))
                else:
                    owner._pieces[part] = cached  # most recently used last
                    out.append(_packed(cached.ids))
        out.append(token_bytes(owner._around[1]) if special and owner._around else b"")
        batch, backend = list(texts), owner._backend

        def encode() -> list[bytes]:
            encodings = backend.encode_batch_fast(batch, add_special_tokens=False) if batch else []
            return [token_bytes(enc.ids) for enc in encodings]

        def finish(encoded: list[bytes]) -> bytes:
            for text, index in texts.items():
                owner._keep_piece(text, encoded[index])
            data = b"".join(x if isinstance(x, bytes) else encoded[x] for x in out)
            self._i, self._pos, self._part_read = len(parts), 0, []
            self._read_chars = self._chars
            self._tokens += len(data) // 4
            self.done = True
            return data

        return encode, finish

    def _step(self) -> bytes:
        owner, parts = self._owner, self._parts
        if self._i == -2:
            self.done = True
            self._read_chars = self._chars
            return owner._encode_packed(parts[0], self._special)
        if self._i == -1:
            self._i = 0
            return token_bytes(owner._around[0]) if self._special and owner._around else b""
        if self._i >= len(parts):
            self.done = True
            return token_bytes(owner._around[1]) if self._special and owner._around else b""
        part = parts[self._i]
        if self._i % 2:
            self._i += 1
            return token_bytes((owner._added[part],))
        if self._pos == 0 and (len(part) <= 2 * owner._window or part in owner._pieces):
            self._i += 1
            self._read_chars += len(part)
            return owner._piece_bytes(part) if part else b""
        ids, used = owner._window_ids(part, self._pos)
        self._pos += used
        self._read_chars += used
        if self._pos >= len(part):
            self._i += 1
            self._pos = 0
            self._part_read = []
        else:
            self._part_read.append(ids)
        return ids


class HFTokenizer:
    """``encode`` and ``render_chat`` for one model folder (see the module docstring)."""

    def __init__(self, backend: RustTokenizer, config: Mapping[str, Any], templates: Mapping[str, str],
                 name: str = "", *, piece_cache_chars: int = 16_000_000,
                 window_cache_chars: int = _WINDOW_CACHE_CHARS) -> None:  # fmt: skip
        self.name = name
        self._backend = backend
        self._templates = dict(templates)
        self._env = _environment()
        self._compiled: dict[str, jinja2.Template] = {}
        self._special = {k: t for k in _SPECIAL_KEYS if (t := _token_text(config.get(k))) is not None}
        decoder = backend.get_added_tokens_decoder()
        self._added = {t.content: i for i, t in decoder.items()}
        plain = all(not (t.normalized or t.lstrip or t.rstrip or t.single_word) for t in decoder.values())
        self._split: re.Pattern[str] | None = None
        if plain and self._added:
            alternatives = sorted(self._added, key=len, reverse=True)  # leftmost-longest, like the Rust matcher
            self._split = re.compile("(" + "|".join(map(re.escape, alternatives)) + ")")
        self._around = self._special_frame()
        self._pieces: dict[str, _Piece] = {}
        self._marks: dict[int, tuple[str, int]] = {}  # checkpoint hash → (piece text, index in its marks)
        self._seen: dict[int, None] = {}  # chunk hashes of text encoded without reuse points, oldest first
        self._piece_chars = 0
        self._max_piece_chars = piece_cache_chars
        self._windows: dict[tuple[str, bool], tuple[bytes, int]] = {}  # (window, last?) → (ids, chars), oldest first
        self._window_chars = 0
        self._max_window_chars = window_cache_chars
        self._window = _WINDOW
        self._reuse = True
        if not self._reuse_holds():
            self._reuse = False
        if not self._segmenting_holds():
            self._split = None
            self._around = None
        self._stream_ok = _streamable(backend)
        if self._stream_ok and not self._streaming_holds():
            self._stream_ok = False
        self._forget()

    @classmethod
    def from_dir(cls, folder: str | Path) -> HFTokenizer:
        """Load ``folder``; ``ValueError`` with the reason when it holds no usable tokenizer."""
        path = Path(folder)
        tokenizer_file = path / "tokenizer.json"
        if not tokenizer_file.is_file():
            raise ValueError(f"{path} has no tokenizer.json (only fast tokenizers are supported)")
        try:
            backend = RustTokenizer.from_file(str(tokenizer_file))
            config = _read_json(path / "tokenizer_config.json")
            for key, value in _read_json(path / "special_tokens_map.json").items():
                config.setdefault(key, value)
            templates = _templates(path, config)
        except Exception as err:  # noqa: BLE001 - tokenizers raises plain Exception for a bad file
            raise ValueError(f"cannot load the tokenizer in {path}: {err}") from None
        return cls(backend, config, templates, str(path))

    # -- encoding -------------------------------------------------------------------------------
    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        """The token ids of ``text``, with the post-processor's special tokens (BOS) if asked."""
        return _unpacked(self._encode_packed(text, add_special_tokens)).tolist()

    def _encode_packed(self, text: str, add_special_tokens: bool) -> bytes:
        """``encode``'s ids packed (``token_bytes``): remembered pieces are copied as they are stored."""
        if self._split is None or (add_special_tokens and self._around is None):
            return token_bytes(self._backend.encode_batch_fast([text], add_special_tokens=add_special_tokens)[0].ids)
        parts = self._split.split(text)  # text, added token, text, added token, …, text
        missing = [p for p in parts[0::2] if p and p not in self._pieces]
        if missing:
            self._remember(dict.fromkeys(missing))
            if any(p not in self._pieces for p in missing):  # more new text than the cache holds
                return token_bytes(self._backend.encode_batch_fast([text], add_special_tokens=add_special_tokens)[0].ids)
        out: list[bytes] = []
        if add_special_tokens:
            assert self._around is not None
            out.append(token_bytes(self._around[0]))
        pieces, added = self._pieces, self._added
        for i, part in enumerate(parts):
            if i % 2:
                out.append(token_bytes((added[part],)))
            elif part:
                cached = pieces.pop(part)  # re-inserted: most recently used last
                pieces[part] = cached
                out.append(_packed(cached.ids))
        if add_special_tokens:
            assert self._around is not None
            out.append(token_bytes(self._around[1]))
        return b"".join(out)

    def stream(self, text: str, add_special_tokens: bool = True) -> TokenStream:
        """``encode(text, add_special_tokens)``, read front to back on demand (``TokenStream``)."""
        return TokenStream(self, text, add_special_tokens)

    def _piece_bytes(self, part: str) -> bytes:
        """A piece's packed ids through the piece cache (encoded and remembered when new)."""
        cached = self._pieces.pop(part, None)
        if cached is None:
            self._remember({part: None})
            cached = self._pieces.pop(part, None)
            if cached is None:  # more than the cache holds
                return token_bytes(self._backend.encode_batch_fast([part], add_special_tokens=False)[0].ids)
        self._pieces[part] = cached  # most recently used last
        return _packed(cached.ids)

    def _window_ids(self, part: str, pos: int) -> tuple[bytes, int]:
        """The packed ids of ``part`` from ``pos`` (a word boundary) up to the safe cut of a window
        (``TokenStream``), and the characters they cover; the rest of the piece when the window reaches
        its end or has no safe cut (one long word). Remembered by the window's text."""
        window = part[pos : pos + self._window]
        key = (window, pos + len(window) >= len(part))  # a piece's last window is encoded to its end
        windows = self._windows
        found = windows.pop(key, None)
        if found is None:
            found = None if key[1] else self._cut(window)
            if found is None:
                key = (part[pos:], True)
                found = (token_bytes(self._backend.encode_batch_fast([key[0]], add_special_tokens=False)[0].ids), len(key[0]))
            if len(key[0]) > self._max_window_chars:
                return found  # more than the cache holds
            self._window_chars += len(key[0])
            while self._window_chars > self._max_window_chars:
                oldest = next(iter(windows))
                del windows[oldest]
                self._window_chars -= len(oldest[0])
        windows[key] = found  # most recently used last
        return found

    def _cut(self, window: str) -> tuple[bytes, int] | None:
        return _safe_cut(window, self._backend.encode(window, add_special_tokens=False))

    def _remember(self, texts: Mapping[str, None]) -> None:
        short = [t for t in texts if not self._reuse or len(t) < 2 * _CHUNK]
        for text, enc in zip(short, self._backend.encode_batch_fast(short, add_special_tokens=False) if short else ()):
            self._pieces[text] = _Piece(array(_U32, enc.ids), [])
            self._piece_chars += len(text)
        for text in texts:
            if text not in self._pieces:
                self._pieces[text] = self._encode_long(text)
                self._piece_chars += len(text)
        self._trim_pieces()

    def _keep_piece(self, text: str, packed: bytes) -> None:
        """Remember a piece a stream read (its packed ids known, no reuse points)."""
        if text not in self._pieces:
            self._pieces[text] = _Piece(_unpacked(packed), [])
            self._piece_chars += len(text)
            self._trim_pieces()

    def _trim_pieces(self) -> None:
        while self._piece_chars > self._max_piece_chars and self._pieces:
            oldest = next(iter(self._pieces))
            self._piece_chars -= len(oldest)
            for h, _, _ in self._pieces.pop(oldest).marks:
                if self._marks.get(h, ("",))[0] is oldest:
                    del self._marks[h]

    def _encode_long(self, text: str) -> _Piece:
        """A long piece's ids, reusing the longest remembered piece it starts with (module docstring).

        Finding reuse points needs the encoding's offsets (about a fifth dearer than ids alone), so
        the part after what is reused is encoded plainly unless its first chunk (in its place: the hash
        is chained) was seen before: a unique tail costs no offsets; the second text continuing the same
        way records points there, the third and later reuse them (a conversation resent with one more
        turn reuses all but the newest turns)."""
        hashes = _chunk_hashes(text)
        ids = array(_U32)
        marks: list[tuple[int, int, int]] = []
        start = 0
        for k in range(len(hashes) - 1, -1, -1):
            found = self._marks.get(hashes[k])
            if found is None:
                continue
            source, index = found
            end = (k + 1) * _CHUNK
            piece = self._pieces.get(source)
            if piece is not None and source[:end] == text[:end]:
                _, tokens, start = piece.marks[index]
                ids = piece.ids[:tokens]
                marks = piece.marks[: index + 1]
                break
        after = hashes[len(marks)] if len(marks) < len(hashes) else None
        if after is None or after not in self._seen:
            if after is not None:
                self._seen[after] = None
                if len(self._seen) > _MAX_SEEN:
                    del self._seen[next(iter(self._seen))]
            ids.extend(self._backend.encode_batch_fast([text[start:]], add_special_tokens=False)[0].ids)
            piece = _Piece(ids, marks)
            for index, (h, _, _) in enumerate(marks):
                self._marks[h] = (text, index)
            return piece
        enc = self._backend.encode(text[start:], add_special_tokens=False)
        reused = len(ids)
        ids.extend(enc.ids)
        words = enc.word_ids
        begins = [b for b, _ in enc.offsets]  # character offsets in text[start:], one per token
        for k in range(len(marks), len(hashes)):
            at = bisect.bisect_right(begins, (k + 1) * _CHUNK - _MARGIN - start) - 1
            # back to the first token of a pre-tokenizer word that does not continue a whitespace run
            while at > 0 and (words[at] == words[at - 1] or text[start + begins[at] - 1].isspace()):
                at -= 1
            if at <= 0:
                break  # no boundary in the new part yet: later checkpoints reuse the earlier ones
            marks.append((hashes[k], reused + at, start + begins[at]))
        for index, (h, _, _) in enumerate(marks):
            self._marks[h] = (text, index)
        return _Piece(ids, marks)

    def _forget(self) -> None:
        self._pieces.clear()
        self._marks.clear()
        self._seen.clear()
        self._piece_chars = 0
        self._windows.clear()
        self._window_chars = 0

    def _streaming_holds(self) -> bool:
        """Whether streams with small windows (many cuts) give whole-text ids on probe texts."""
        words = "alpha beta, gamma  delta;  epsilon\n zeta (eta)\t theta 42 1234567 iota.\n\nkappa's \u00e9l\u00e8ve ne\u0301 \u4e2d\u6587 "
        probes = [words * 4, (words * 4).replace(" ", "  "), "x" * 300 + words, words * 3 + "\n  \n"]
        probes += [f"{words}{t}{words}{t}" for t in list(self._added)[:2]]
        window = self._window
        self._window = 48
        try:
            for probe in probes:
                for special in (False, True):
                    stream = self.stream(probe, special)
                    chunks = []
                    while not stream.done:
                        chunks.append(stream.read(1))
                    got = b"".join(chunks)
                    if got != token_bytes(self._backend.encode(probe, add_special_tokens=special).ids):
                        return False
            return True
        finally:
            self._window = window

    def _reuse_holds(self) -> bool:
        """Whether a piece encoded from a remembered prefix equals its whole-text encoding."""
        words = "alpha beta, gamma delta;  epsilon\n zeta (eta) theta 42 iota.\n\nkappa lambda mu nu xi "
        shared = words * (3 * _CHUNK // len(words))
        for tail in ("omicron pi rho", " sigma\n\n tau", "\n  upsilon", "phi"):
            for text in (shared + tail, shared[: -_CHUNK // 2] + tail):
                self._seen.update(dict.fromkeys(_chunk_hashes(shared)))
                self._remember({shared: None})
                got = self._encode_long(text).ids.tolist()
                self._forget()
                if got != self._backend.encode(text, add_special_tokens=False).ids:
                    return False
        return True

    def _special_frame(self) -> tuple[list[int], list[int]] | None:
        """What the post-processor puts before and after a text (e.g. ``([bos], [])``), or None when
        it is not a plain frame."""
        probe = "frame probe"
        bare = self._backend.encode(probe, add_special_tokens=False).ids
        framed = self._backend.encode(probe, add_special_tokens=True).ids
        for start in range(len(framed) - len(bare) + 1):
            if framed[start : start + len(bare)] == bare:
                return framed[:start], framed[start + len(bare) :]
        return None

    def _segmenting_holds(self) -> bool:
        """Whether cutting at added tokens gives whole-text ids, on probes and a rendered chat."""
        if self._split is None:
            return True
        probes = [f"Hi {t} there\n\n  x{t}{t}y\t {t}\n" for t in list(self._added)[:8]]
        try:
            probes.append(self.render_chat([
                {"role": "system", "content": " You are helpful.\n"}, {"role": "user", "content": "Hello  there!\n\n"},
                {"role": "assistant", "content": "Hi."}, {"role": "user", "content": "x"}
            ], {}))  # fmt: skip
        except ChatTemplateError:
            pass
        for probe in probes:
            for special in (False, True):
                if self.encode(probe, special) != self._backend.encode(probe, add_special_tokens=special).ids:
                    return False
        return True

    # -- chat -----------------------------------------------------------------------------------
    @property
    def has_chat_template(self) -> bool:
        return bool(self._templates)

    def _template(self, name_or_source: str | None, tools: Any) -> jinja2.Template:
        if name_or_source is not None and name_or_source not in self._templates:
            source = name_or_source  # a template given in the request
        elif name_or_source is not None:
            source = self._templates[name_or_source]
        elif tools and "tool_use" in self._templates:
            source = self._templates["tool_use"]
        elif "default" in self._templates:
            source = self._templates["default"]
        elif len(self._templates) == 1:
            source = next(iter(self._templates.values()))
        else:
            raise ChatTemplateError(f"model {self.name or '?'} has no chat template")
        compiled = self._compiled.get(source)
        if compiled is None:
            try:
                compiled = self._compiled[source] = self._env.from_string(source)
            except jinja2.exceptions.TemplateError as err:
                raise ChatTemplateError(f"chat template does not compile: {err}") from None
        return compiled

    def render_chat(self, messages: Sequence[Mapping[str, Any]], options: Mapping[str, Any] | None = None) -> str:
        """The chat prompt text; ``options`` is the request body (``add_generation_prompt``,
        ``continue_final_message``, ``tools``, ``documents``, ``chat_template``,
        ``chat_template_kwargs``). Raises ``ChatTemplateError``."""
        options = options or {}
        conversation = _conversation(messages)
        tools = options.get("tools")
        template = self._template(options.get("chat_template") if isinstance(options.get("chat_template"), str) else None, tools)
        kwargs = options.get("chat_template_kwargs")
        continue_final = bool(options.get("continue_final_message", False))
        variables: dict[str, Any] = {
            **self._special, **(kwargs if isinstance(kwargs, Mapping) else {}),
            "messages": conversation, "tools": tools, "documents": options.get("documents"),
            "add_generation_prompt": bool(options.get("add_generation_prompt", not continue_final)),
        }  # fmt: skip
        try:
            rendered = template.render(**variables)
        except (jinja2.exceptions.TemplateError, TypeError, KeyError, AttributeError, ValueError) as err:
            raise ChatTemplateError(f"chat template failed: {err}") from None
        if continue_final and conversation:
            rendered = _cut_after_final(rendered, conversation[-1].get("content"))
        return rendered


def _cut_after_final(rendered: str, final: Any) -> str:
    """transformers' ``continue_final_message``: end the prompt right after the last message's text."""
    if not isinstance(final, str) or not final:
        return rendered
    for text in (final, final.strip()):
        at = rendered.rfind(text)
        if at >= 0:
            return rendered[: at + len(text)]
    raise ChatTemplateError("continue_final_message: the final message is not in the rendered prompt")

