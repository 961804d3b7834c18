"""All KV blocks of one engine: the free queue in eviction order, the hash → block map, and the
KV-cache events vLLM publishes (``BlockStored``/``BlockRemoved``/``AllBlocksCleared``).

A free block may still hold a cached prefix: it stays in the hash map until it is handed out again
(evicted) or touched by a prefix hit (revived). The free queue is an ``OrderedDict`` (C-implemented,
O(1) removal from the middle) ordered oldest-first: blocks are evicted from the front; a finished
request's blocks go to the back, tail first, so a shared prefix head is evicted last. Block 0 is a
reserved null block, as in vLLM, and never counts as usable.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass


class KVCacheBlock:
    __slots__ = ("block_id", "ref_cnt", "block_hash")

    def __init__(self, block_id: int) -> None:
        self.block_id = block_id
        self.ref_cnt = 0
        self.block_hash: int | None = None

    def __repr__(self) -> str:
        return f"KVCacheBlock({self.block_id}, ref={self.ref_cnt}, hash={self.block_hash})"


@dataclass(frozen=True, slots=True)
class BlockStored:
    """Consecutive blocks of one request became cached; ``token_ids`` are their tokens."""

    block_hashes: tuple[int, ...]
    parent_block_hash: int | None
    token_ids: tuple[int, ...]
    block_size: int
    lora_name: str | None
    medium: str = "GPU"
    cache_salt: str | None = None
    """The request's salt when the run starts at its first block (vLLM hashes it into that block)."""


@dataclass(frozen=True, slots=True)
class BlockRemoved:
    block_hashes: tuple[int, ...]
    medium: str = "GPU"


@dataclass(frozen=True, slots=True)
class AllBlocksCleared:
    pass


KVCacheEvent = BlockStored | BlockRemoved | AllBlocksCleared


class BlockPool:
    def __init__(self, num_blocks: int, *, enable_caching: bool = True, enable_events: bool = False) -> None:
        if num_blocks < 2:
            raise ValueError("need at least 2 blocks (block 0 is reserved)")
        self.blocks = [KVCacheBlock(i) for i in range(num_blocks)]
        self.blocks[0].ref_cnt = 1  # the null block is never free
        self.enable_caching = enable_caching
        self.enable_events = enable_events
        self._free: OrderedDict[int, KVCacheBlock] = OrderedDict((b.block_id, b) for b in self.blocks[1:])
        self._cached: dict[int, KVCacheBlock] = {}
        self._events: list[KVCacheEvent] = []

    @property
    def num_usable_blocks(self) -> int:
        return len(self.blocks) - 1

    @property
    def num_free_blocks(self) -> int:
        return len(self._free)

    def usage(self) -> float:
        """Fraction of usable blocks held by requests (cached-but-free blocks count as free)."""
        return 1.0 - len(self._free) / self.num_usable_blocks

    def get_cached_block(self, block_hash: int) -> KVCacheBlock | None:
        return self._cached.get(block_hash)

    def touch(self, blocks: Iterable[KVCacheBlock]) -> None:
        """Take a reference on prefix-hit blocks, pulling free ones out of the eviction queue."""
        for block in blocks:
            if block.ref_cnt == 0:
                del self._free[block.block_id]
            block.ref_cnt += 1

    def get_new_blocks(self, count: int) -> list[KVCacheBlock]:
        """Hand out ``count`` blocks from the front of the free queue, evicting their cached hashes."""
        if count > len(self._free):
            raise ValueError(f"cannot get {count} blocks, {len(self._free)} free")
        out: list[KVCacheBlock] = []
        pop = self._free.popitem
        for _ in range(count):
            block = pop(last=False)[1]
            if block.block_hash is not None:
                self._evict(block)
            block.ref_cnt = 1
            out.append(block)
        return out

    def _evict(self, block: KVCacheBlock) -> None:
        block_hash = block.block_hash
        assert block_hash is not None
        if self._cached.get(block_hash) is block:
            del self._cached[block_hash]
            if self.enable_events:
                self._events.append(BlockRemoved((block_hash,)))
        block.block_hash = None

    def cache_full_blocks(
        self,
        blocks: Sequence[KVCacheBlock],
        block_hashes: Sequence[int],
        start: int,
        end: int,
        token_ids: Sequence[int],
        block_size: int,
        lora_name: str | None,
        cache_salt: str | None = None,
    ) -> None:
        """Register ``blocks[start:end]`` under their hashes. A hash already cached in another block
        (two requests computed the same prefix concurrently) keeps the first block."""
        if not self.enable_caching:
            return
        run_start = -1
        for i in range(start, end):
            block, block_hash = blocks[i], block_hashes[i]
            if block.block_hash is None and block_hash not in self._cached:
                self._cached[block_hash] = block
                block.block_hash = block_hash
                if run_start < 0:
                    run_start = i
            elif run_start >= 0:
                self._stored(block_hashes, run_start, i, token_ids, block_size, lora_name, cache_salt)
                run_start = -1
        if run_start >= 0:
            self._stored(block_hashes, run_start, end, token_ids, block_size, lora_name, cache_salt)

    def _stored(
        self,
        block_hashes: Sequence[int],
        start: int,
        end: int,
        token_ids: Sequence[int],
        block_size: int,
        lora_name: str | None,
        cache_salt: str | None,
    ) -> None:
        if self.enable_events:
            parent = block_hashes[start - 1] if start > 0 else None
            tokens = tuple(token_ids[start * block_size : end * block_size])
            salt = cache_salt if start == 0 else None
            self._events.append(
                BlockStored(tuple(block_hashes[start:end]), parent, tokens, block_size, lora_name, cache_salt=salt)
            )

    def free_blocks(self, ordered: Iterable[KVCacheBlock]) -> None:
        """Drop one reference each; blocks reaching zero join the free queue in the given order
        (callers pass a request's blocks tail first). Uncached blocks go to the front: they are
        worthless, so they are reused before any cached prefix."""
        free = self._free
        for block in ordered:
            block.ref_cnt -= 1
            if block.ref_cnt == 0:
                free[block.block_id] = block
                if block.block_hash is None:
                    free.move_to_end(block.block_id, last=False)

    def reset_prefix_cache(self) -> bool:
        """Forget every cached hash (vLLM's ``reset_prefix_cache``); only when no block is in use."""
        if len(self._free) != self.num_usable_blocks:
            return False
        for block in self._cached.values():
            block.block_hash = None
        self._cached.clear()
        if self.enable_events:
            self._events.append(AllBlocksCleared())
        return True

    def take_events(self) -> list[KVCacheEvent]:
        events, self._events = self._events, []
        return events
