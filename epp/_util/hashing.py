"""Chained block hashes: equal prefixes give equal leading hashes, so a prefix match is a walk
from block 0 until the first unknown hash.

h0 = H(seed), h_i = H(block_i || LE64(h_{i-1})), with H = xxhash64. The seed (model name, cache salt)
keeps different models from ever sharing entries.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Sequence

import xxhash

_LE64 = struct.Struct("<Q")


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
