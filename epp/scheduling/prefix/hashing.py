"""A request's prompt as chained block hashes (GIE's approximate prefix scheme).

Text prompts are cut into blocks of ``block_tokens × 4`` bytes (GIE's 4-characters-per-token estimate;
16 tokens → 64 bytes); when the request carries token ids, blocks are ``block_tokens`` token ids
packed as little-endian uint32, as the reference hashes real tokens. A trailing partial block is
dropped and at most ``max_blocks`` blocks are hashed. The chain is seeded with the target model (and
the request's ``cache_salt``), so two models never share an entry. With a ``ChainMemo`` the segments
of the prompt seen recently are not hashed again (same hashes, fewer calls).
"""

from __future__ import annotations

from collections.abc import Callable

from epp._util.hashing import ChainMemo, chain_bytes, seed_hash, token_bytes
from epp.request import LLMRequest

BYTES_PER_TOKEN = 4


def request_seed(request: LLMRequest) -> int:
    """The chain's root for ``request``: its target model (a LoRA adapter's name when it targets one)
    and its ``cache_salt``, which vLLM hashes into the first block (so into every block after it)."""
    salt = request.body.get("cache_salt") if request.body else None
    return seed_hash(request.target_model + (salt if isinstance(salt, str) else ""))


def hashed_once(
    request: LLMRequest, key: tuple[object, ...], sources: tuple[object, ...], compute: Callable[[], list[int]]
) -> list[int]:
    """``compute()``, once per request for ``key`` (what the hashes depend on besides the request) and
    ``sources`` (the request's objects they are computed from, compared by identity: a prompt replaced
    since is hashed again). Every producer and scorer asking for the same hashes shares one list, which
    callers must not modify."""
    entry = request.block_hashes.get(key)
    if entry is not None and len(entry[0]) == len(sources) and all(a is b for a, b in zip(entry[0], sources)):
        return entry[1]
    hashes = compute()
    request.block_hashes[key] = (sources, hashes)
    return hashes


def prompt_block_hashes(
    request: LLMRequest, block_tokens: int, max_blocks: int, memo: ChainMemo | None = None
) -> list[int]:
    """The prompt's chained hashes of ``block_tokens``-token blocks (at most ``max_blocks``), hashed once
    per request (``hashed_once``)."""
    seed = request_seed(request)
    return hashed_once(
        request, ("prompt", block_tokens, max_blocks, seed), (request.prompt_token_ids, request.prompt_bytes),
        lambda: _prompt_block_hashes(request, block_tokens, max_blocks, seed, memo),
    )


def _prompt_block_hashes(request: LLMRequest, block_tokens: int, max_blocks: int, seed: int,
                         memo: ChainMemo | None) -> list[int]:
    if request.prompt_token_ids is not None:  # token_blocks' bytes, contiguous: uint32 ids, 4 bytes each
        return chain_bytes(token_bytes(request.prompt_token_ids[: block_tokens * max_blocks]), block_tokens * 4, seed, memo)
    block_bytes = block_tokens * BYTES_PER_TOKEN
    return chain_bytes(request.prompt_bytes[: block_bytes * max_blocks], block_bytes, seed, memo)
