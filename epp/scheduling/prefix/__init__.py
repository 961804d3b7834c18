"""Prefix-cache locality: prompts as chained block hashes, and an index of which endpoint holds which.

``PrefixIndex`` is the seam: the approximate ``BlockIndex`` learns from epp's own routing decisions;
``precise.PreciseIndex`` implements it over the blocks engines report in their KV events.
"""

from epp.scheduling.prefix.hashing import prompt_block_hashes
from epp.scheduling.prefix.index import BlockIndex
from epp.scheduling.prefix.protocol import PrefixIndex

__all__ = ["BlockIndex", "PrefixIndex", "prompt_block_hashes"]
