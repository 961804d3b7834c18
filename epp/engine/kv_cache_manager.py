"""The scheduler's view of the KV cache, as vLLM v1's ``KVCacheManager``.

Token regions of a request when a step allocates for it::

    |<- computed (KV present) ->|<- new computed (prefix hit) ->|<- new (this step) ->|
    |<------------- blocks already held --------------->|<- new blocks to allocate ->|

A prefix hit is capped at ``num_tokens - 1`` tokens: the last prompt token is always recomputed,
because the engine needs its logits to sample the first output token. ``allocate_slots`` returns
``None`` when the blocks are not there; the scheduler then preempts and retries.
"""

from __future__ import annotations

from epp.engine.block_pool import BlockPool, KVCacheBlock
from epp.engine.request import EngineRequest


class KVCacheManager:
    def __init__(self, pool: BlockPool, block_size: int) -> None:
        self.pool = pool
        self.block_size = block_size
        self.req_to_blocks: dict[str, list[KVCacheBlock]] = {}
        self._num_cached_blocks: dict[str, int] = {}
        self.prefix_cache_queries = 0
        self.prefix_cache_hits = 0
        """Tokens, cumulative: the prompt length and the prefix hit of each request at its first admission."""

    def usage(self) -> float:
        return self.pool.usage()

    def get_computed_blocks(self, request: EngineRequest) -> tuple[list[KVCacheBlock], int]:
        """The longest cached prefix of ``request`` (whole blocks) and its length in tokens."""
        hits: list[KVCacheBlock] = []
        if self.pool.enable_caching:
            max_blocks = (request.num_tokens - 1) // self.block_size
            get = self.pool.get_cached_block
            for block_hash in request.block_hashes[:max_blocks]:
                block = get(block_hash)
                if block is None:
                    break
                hits.append(block)
        return hits, len(hits) * self.block_size

    def record_prefix_query(self, num_tokens: int, num_hit_tokens: int) -> None:
        """Count an admitted request's lookup (once per request, as vLLM counts it)."""
        self.prefix_cache_queries += num_tokens
        self.prefix_cache_hits += num_hit_tokens

    def allocate_slots(
        self,
        request: EngineRequest,
        num_new_tokens: int,
        new_computed_blocks: list[KVCacheBlock] | None = None,
    ) -> list[KVCacheBlock] | None:
        """Make room for ``num_new_tokens`` more tokens after the computed ones (and after the prefix
        hit ``new_computed_blocks``, which this call takes references on). ``None``: not enough
        free blocks; nothing changed."""
        computed = new_computed_blocks or []
        req_blocks = self.req_to_blocks.get(request.request_id)
        held = len(req_blocks) if req_blocks is not None else 0
        num_computed = request.num_computed_tokens + len(computed) * self.block_size
        total = num_computed + num_new_tokens
        num_required = -(-total // self.block_size)
        num_new_blocks = num_required - held - len(computed)
        revived = sum(1 for b in computed if b.ref_cnt == 0)
        if num_new_blocks > self.pool.num_free_blocks - revived:
            return None
        if req_blocks is None:
            req_blocks = self.req_to_blocks[request.request_id] = []
            self._num_cached_blocks[request.request_id] = 0
        if computed:
            self.pool.touch(computed)
            req_blocks.extend(computed)
            self._num_cached_blocks[request.request_id] += len(computed)
        new_blocks = self.pool.get_new_blocks(num_new_blocks) if num_new_blocks > 0 else []
        req_blocks.extend(new_blocks)
        self._cache(request, req_blocks, min(total, request.num_tokens) // self.block_size)
        return new_blocks

    def _cache(self, request: EngineRequest, blocks: list[KVCacheBlock], num_full: int) -> None:
        rid = request.request_id
        start = self._num_cached_blocks[rid]
        num_full = min(num_full, len(request.block_hashes))
        if num_full > start:
            self.pool.cache_full_blocks(
                blocks, request.block_hashes, start, num_full, request.all_token_ids, self.block_size, request.lora,
                request.cache_salt,
            )
            self._num_cached_blocks[rid] = num_full

    def free(self, request: EngineRequest) -> None:
        """Release a finished or preempted request's blocks, tail first (see ``BlockPool``)."""
        blocks = self.req_to_blocks.pop(request.request_id, None)
        self._num_cached_blocks.pop(request.request_id, None)
        if blocks:
            self.pool.free_blocks(reversed(blocks))
