"""One request inside the engine, as vLLM's v1 ``Request``: computed tokens chase total tokens."""

from __future__ import annotations

import enum
from collections.abc import Sequence

from epp._util.hashing import chain_hashes, token_blocks
from epp.engine.filler import FILLER_TOKEN_IDS


class RequestStatus(enum.IntEnum):
    WAITING = 0
    RUNNING = 1
    PREEMPTED = 2
    FINISHED_LENGTH = 3
    FINISHED_ABORTED = 4

    @property
    def finished(self) -> bool:
        return self >= RequestStatus.FINISHED_LENGTH


class EngineRequest:
    """A prompt to prefill and ``max_tokens`` tokens to generate (always all of them: the simulated
    model never emits EOS, like ``ignore_eos``).

    ``all_token_ids`` is prompt + generated tokens; ``num_computed_tokens`` is how many of them have
    KV in the cache. A step schedules ``num_tokens - num_computed_tokens`` (capped by the budget), so a
    long prompt is prefilled in chunks and a decode is simply one new token. ``block_hashes`` covers the
    full blocks of ``all_token_ids``; the core fills it on ``add_request`` and extends it as output
    tokens complete blocks. Generated tokens cycle through ``FILLER_TOKEN_IDS``, so equal prompts get
    equal outputs (and equal output-block hashes).
    """

    __slots__ = (
        "request_id",
        "prompt_token_ids",
        "max_tokens",
        "arrival_time",
        "lora",
        "cache_salt",
        "all_token_ids",
        "num_prompt_tokens",
        "num_computed_tokens",
        "num_output_tokens",
        "num_cached_tokens",
        "block_hashes",
        "hash_seed",
        "status",
        "num_preemptions",
        "first_token_time",
        "finish_time",
    )

    def __init__(
        self,
        request_id: str,
        prompt_token_ids: Sequence[int],
        max_tokens: int,
        arrival_time: float,
        lora: str | None = None,
        cache_salt: str | None = None,
    ) -> None:
        if not prompt_token_ids:
            raise ValueError("prompt must have at least one token")
        if max_tokens < 1:
            raise ValueError("max_tokens must be >= 1")
        self.request_id = request_id
        self.prompt_token_ids = prompt_token_ids
        self.max_tokens = max_tokens
        self.arrival_time = arrival_time
        self.lora = lora
        self.cache_salt = cache_salt
        """vLLM's per-request ``cache_salt``: hashed into the first block, so only requests with the
        same salt share cached blocks."""
        self.all_token_ids: list[int] = list(prompt_token_ids)
        self.num_prompt_tokens = len(self.all_token_ids)
        self.num_computed_tokens = 0
        self.num_output_tokens = 0
        self.num_cached_tokens = -1
        """Prefix-cache hit at first admission, in tokens; -1 until admitted."""
        self.block_hashes: list[int] = []
        self.hash_seed = 0
        self.status = RequestStatus.WAITING
        self.num_preemptions = 0
        self.first_token_time: float | None = None
        self.finish_time: float | None = None

    @property
    def num_tokens(self) -> int:
        return len(self.all_token_ids)

    @property
    def remaining_tokens(self) -> int:
        return self.max_tokens - self.num_output_tokens

    def init_hashes(self, block_size: int, seed: int) -> None:
        """Hash the prompt's full blocks once (O(prompt length))."""
        self.hash_seed = seed
        self.block_hashes = chain_hashes(token_blocks(self.all_token_ids, block_size), seed)

    def append_output(self, count: int, block_size: int) -> list[int]:
        """Generate ``count`` filler tokens, hash any block they complete, return the new ids."""
        start = self.num_output_tokens
        n = len(FILLER_TOKEN_IDS)
        new = [FILLER_TOKEN_IDS[(start + i) % n] for i in range(count)]
        self.all_token_ids.extend(new)
        self.num_output_tokens += count
        full = len(self.all_token_ids) // block_size
        if full > len(self.block_hashes):
            first = len(self.block_hashes)
            blocks = token_blocks(self.all_token_ids[first * block_size : full * block_size], block_size)
            parent = self.block_hashes[-1] if self.block_hashes else self.hash_seed
            self.block_hashes.extend(chain_hashes(blocks, parent))
        return new
