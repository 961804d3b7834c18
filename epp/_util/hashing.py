"""Chained block hashes: equal prefixes give equal leading hashes, so a prefix match is a walk
from block 0 until the first unknown hash.

h0 = H(seed), h_i = H(block_i || LE64(h_{i-1})), with H = xxhash64. The seed (model name, cache salt)
keeps different models from ever sharing entries.
"""

from __future__ import annotations

import struct
import sys
from array import array
from collections.abc import Iterable, Sequence
from itertools import islice

import numpy as np
import numpy.typing as npt
import xxhash

U64 = npt.NDArray[np.uint64]
_LE64 = struct.Struct("<Q")
_U32 = next(code for code in "IL" if array(code).itemsize == 4)


def seed_hash(seed: str) -> int:
    """The chain's root, from the model name (and salt): models never share a chain."""
    return xxhash.xxh64_intdigest(seed.encode())


def chain_hashes(blocks: Iterable[bytes], seed: int) -> list[int]:
    """Hash each block chained to its predecessor, starting from ``seed``."""
    out: list[int] = []
    append, digest, pack = out.append, xxhash.xxh64_intdigest, _LE64.pack  # hot loop: local names
    parent = seed
    for block in blocks:
        parent = digest(block + pack(parent))
        append(parent)
    return out


def chain_run(data: bytes, block_bytes: int, seed: int, start: int = 0, end: int | None = None) -> tuple[list[int], U64]:
    """``chain_hashes(text_blocks(data[start:end], block_bytes), seed)`` as a list and as a read-only
    uint64 array, without building the blocks' list nor copying ``data``'s slice, and with
    ``int.to_bytes`` for the parent (together ~25 % less per block: this loop is most of what a novel
    long prompt costs; keeping the hashes as bytes, reversed big-endian digests, measured no faster)."""
    stop = len(data) if end is None else end
    hashes: list[int] = []
    append, digest = hashes.append, xxhash.xxh64_intdigest
    parent = seed
    for i in range(start, stop - (stop - start) % block_bytes, block_bytes):
        parent = digest(data[i : i + block_bytes] + parent.to_bytes(8, "little"))
        append(parent)
    run = np.fromiter(hashes, dtype=np.uint64, count=len(hashes))
    run.flags.writeable = False
    return hashes, run


def chain_hashes_with_extras(blocks: Sequence[bytes], seed: int, extras: Sequence[bytes | None]) -> list[int]:
    """``chain_hashes`` where block *i* also hashes ``extras[i]`` (serialized extra keys: multimodal
    identifiers, prompt-embedding digests) when given, as vLLM's block hash covers them: a block with
    extras never keys like the same tokens without them, nor do its descendants."""
    out: list[int] = []
    digest, pack = xxhash.xxh64_intdigest, _LE64.pack
    parent = seed
    for block, extra in zip(blocks, extras, strict=True):
        parent = digest(block + pack(parent) + extra) if extra else digest(block + pack(parent))
        out.append(parent)
    return out


def text_blocks(data: bytes, block_bytes: int, *, keep_partial: bool = False) -> list[bytes]:
    """Split ``data`` into blocks of ``block_bytes``; a trailing partial block is dropped unless asked for."""
    end = len(data) if keep_partial else len(data) - len(data) % block_bytes
    return [data[i : i + block_bytes] for i in range(0, end, block_bytes)]


def token_blocks(tokens: Sequence[int], block_size: int) -> list[bytes]:
    """Full blocks of token ids packed as little-endian uint32; the partial tail is never hashed
    (an engine cannot share a block that is still being filled)."""
    full = len(tokens) - len(tokens) % block_size
    fmt = struct.Struct(f"<{block_size}I")
    return [fmt.pack(*tokens[i : i + block_size]) for i in range(0, full, block_size)]


class BlockHashes(list[int]):
    """A prompt's chained block hashes (a plain list of ints) that also carries them as a uint64 array
    once someone has built it: the approximate index looks hashes up as an array, and converting
    3,520 Python ints costs ~85 µs per lookup, so a memoized prompt's array is assembled from its
    segments' arrays instead (``ChainMemo``) and built at most once per list."""

    __slots__ = ("_array",)

    def __init__(self, hashes: Iterable[int] = (), array: U64 | None = None) -> None:
        super().__init__(hashes)
        self._array = array

    def array(self) -> U64:
        """The hashes as a uint64 array (built on first use, then kept: the list must not change)."""
        if self._array is None or len(self._array) != len(self):
            self._array = np.fromiter(self, dtype=np.uint64, count=len(self))
        return self._array


def hash_array(hashes: Sequence[int]) -> U64:
    """``hashes`` as a uint64 array: a ``BlockHashes``'s own, else converted (2× faster than asarray for big ints)."""
    if isinstance(hashes, BlockHashes):
        return hashes.array()
    return np.fromiter(hashes, dtype=np.uint64, count=len(hashes))


class ChainMemo:
    """``chain_hashes(text_blocks(data, block_bytes), seed)`` for long prompts that share prefixes.

    Chaining is sequential (each block's hash needs its predecessor's), so a 128K-token prompt is
    8,192 hash calls. Prompts mostly repeat what came before (system prompts, earlier chat turns):
    here the data is cut into segments of ``segment_blocks`` blocks, and a segment's hashes are a
    pure function of (block size, the hash before it, its bytes), remembered for the ``capacity``
    most recently used segments. A segment is keyed by the block size, the hash before it and its first
    block's hash (one hash call, the chain's own), and a key found is checked against the bytes
    remembered (a segment that starts alike and differs later is a miss, never a wrong answer): a
    repeated segment costs one hash call and one comparison instead of ``segment_blocks``; results are
    identical by construction.

    A prompt's new segments are remembered without copies of their own: each one points into the bytes
    they came with (a novel prompt's own; for a prompt partly remembered, one copy of its new part) and
    into the one list and array of hashes computed for them (a novel 220 KB prompt's 55 segments cost a
    key and a small object each, not a digest and copies of its bytes and hashes, ~0.3 ms in a serving
    process). A segment found again gets its own copies, so what stays in the memo by reuse holds no
    old prompt alive: the bytes held are those of segments not reused since they came, all of them among
    the ``capacity`` most recent. Memory: about ``capacity`` × (segment bytes + 53 bytes per block): 16 MB
    by default with 64-byte blocks.

    The last prompt is also kept whole: the same bytes again (a resent prompt, the next request of a
    load test) return the same ``BlockHashes`` after one comparison, instead of a hash call, a dict
    round trip and a list extension per segment (~0.1 ms at 220 KB).
    """

    __slots__ = ("_capacity", "_last", "_memo", "_segment_blocks")

    def __init__(self, segment_blocks: int = 64, capacity: int = 2048) -> None:
        if segment_blocks < 1 or capacity < 1:
            raise ValueError("segment_blocks and capacity must be at least 1")
        self._segment_blocks = segment_blocks
        self._capacity = capacity
        self._memo: dict[tuple[int, int, int], _Segment] = {}
        self._last: tuple[int, int, bytes, BlockHashes] | None = None  # block bytes, seed, data, its chain

    def __len__(self) -> int:
        return len(self._memo)

    def chain(self, data: bytes, block_bytes: int, seed: int) -> BlockHashes:
        """The chained hashes of ``data``'s full blocks of ``block_bytes``, from ``seed`` (callers must
        not modify the list: the same one is returned for the same data)."""
        last = self._last
        if last is not None and last[0] == block_bytes and last[1] == seed and last[2] == data:
            return last[3]
        memo = self._memo
        step = block_bytes * self._segment_blocks
        end = len(data) - len(data) % block_bytes
        digest, startswith = xxhash.xxh64_intdigest, data.startswith
        out = BlockHashes()
        arrays: list[U64] = []
        parent, start = seed, 0
        while start < end:
            stop = start + step if start + step <= end else end
            key = (block_bytes, parent, digest(data[start : start + block_bytes] + parent.to_bytes(8, "little")))
            segment = memo.pop(key, None)
            # The key tells the first block; the bytes decide (same length: a shorter remembered segment
            # would be a prefix, not a match).
            if segment is None or len(segment.data) != stop - start or not startswith(segment.data, start):
                break
            if segment.lo >= 0:
                segment.own((stop - start) // block_bytes)
            memo[key] = segment
            out += segment.hashes
            arrays.append(segment.array)
            parent = segment.hashes[-1]
            start = stop
        if start < end:
            # The first segment not remembered: what follows hangs off a hash not seen with these bytes
            # before, so it is hashed in one pass (no lookup, chain call and array per segment) and then
            # remembered.
            hashes, run = chain_run(data, block_bytes, parent, start, end)  # run: read-only, shared with the segments
            self._remember(data, start, end, block_bytes, parent, hashes, run)
            out += hashes
            arrays.append(run)
        out._array = arrays[0] if len(arrays) == 1 else np.concatenate(arrays) if arrays else None
        self._last = (block_bytes, seed, data, out)
        return out

    def _remember(self, data: bytes, start: int, end: int, block_bytes: int, parent: int, hashes: list[int],
                  run: U64) -> None:
        """Remember the segments of ``data[start:end]`` (hashed in one pass from ``parent`` as
        ``hashes``/``run``), pointing into them. Past ``capacity`` the least recently used go, a sixteenth
        more at once (deleting one entry at a time from the front of a dict rescans its deleted slots
        each time)."""
        memo, per, step = self._memo, self._segment_blocks, block_bytes * self._segment_blocks
        # A novel prompt's segments point into its bytes (all of them but a partial block are theirs); a
        # prompt partly remembered keeps only its new part, once, so a long conversation's next turn does
        # not hold all of the conversation alive for its last segments.
        view = memoryview(data if start == 0 else data[start:end])
        for i in range(0, len(hashes), per):
            offset = i * block_bytes
            stop = offset + step if start + offset + step <= end else end - start
            memo[(block_bytes, hashes[i - 1] if i else parent, hashes[i])] = _Segment(view[offset:stop], hashes, run, i)
        excess = len(memo) - self._capacity
        if excess > 0:
            for old in list(islice(memo, excess + self._capacity // 16)):
                del memo[old]


class _Segment:
    """A remembered segment: its bytes and hashes. Until it is found again they are views into the
    prompt it came with (``data`` a memoryview of its bytes, its hashes ``hashes[lo:lo + n]`` of that
    prompt's run, likewise ``array``); ``own`` replaces them by copies of its own (``lo`` −1)."""

    __slots__ = ("array", "data", "hashes", "lo")

    def __init__(self, data: bytes | memoryview, hashes: list[int], array: U64, lo: int) -> None:
        self.data = data
        self.hashes = hashes
        self.array = array
        self.lo = lo

    def own(self, blocks: int) -> None:
        """Copy its ``blocks`` hashes and its bytes out of the prompt they came with, which it no longer holds."""
        lo = self.lo
        self.data = bytes(self.data)
        self.hashes = self.hashes[lo : lo + blocks]
        self.array = self.array[lo : lo + blocks].copy()
        self.array.flags.writeable = False
        self.lo = -1


def chain_bytes(data: bytes, block_bytes: int, seed: int, memo: ChainMemo | None = None) -> BlockHashes:
    """``chain_hashes`` of ``data``'s full blocks of ``block_bytes``, through ``memo`` when given."""
    if memo is None:
        hashes, run = chain_run(data, block_bytes, seed)
        return BlockHashes(hashes, run)
    return memo.chain(data, block_bytes, seed)


def token_bytes(tokens: Sequence[int]) -> bytes:
    """Token ids packed as little-endian uint32, as ``token_blocks`` packs them (2× faster for long
    prompts); raises ``OverflowError`` for an id outside uint32."""
    packed = array(_U32, tokens)
    if sys.byteorder != "little":
        packed.byteswap()
    return packed.tobytes()
