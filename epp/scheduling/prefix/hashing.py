"""A request's prompt as chained block hashes (GIE's approximate prefix scheme).

Text prompts are cut into blocks of ``block_tokens × 4`` bytes (GIE's 4-characters-per-token estimate;
16 tokens → 64 bytes); when the request carries token ids, blocks are ``block_tokens`` token ids
packed as little-endian uint32, as the reference hashes real tokens. A trailing partial block is
dropped and at most ``max_blocks`` blocks are hashed. The chain is seeded with the target model (and
the request's ``cache_salt``), so two models never share an entry. With a ``ChainMemo`` the segments
of the prompt seen recently are not hashed again (same hashes, fewer calls).
"""

from __future__ import annotations

from epp._util.hashing import ChainMemo, chain_bytes, seed_hash, token_bytes
from epp.request import LLMRequest

BYTES_PER_TOKEN = 4


def request_seed(request: LLMRequest) -> int:
    """The chain's root for ``request``: its target model (a LoRA adapter's name when it targets one)
    and its ``cache_salt``, which vLLM hashes into the first block (so into every block after it)."""
    salt = request.body.get("cache_salt") if request.body else None
    return seed_hash(request.target_model + (salt if isinstance(salt, str) else ""))


def prompt_block_hashes(
    request: LLMRequest, block_tokens: int, max_blocks: int, memo: ChainMemo | None = None
) -> list[int]:
    seed = request_seed(request)
    if request.prompt_token_ids is not None:  # token_blocks' bytes, contiguous: uint32 ids, 4 bytes each
        return chain_bytes(token_bytes(request.prompt_token_ids[: block_tokens * max_blocks]), block_tokens * 4, seed, memo)
    block_bytes = block_tokens * BYTES_PER_TOKEN
    return chain_bytes(request.prompt_bytes[: block_bytes * max_blocks], block_bytes, seed, memo)
