"""Upper bounds a routing policy's hit ratio is judged against, computed on the trace alone.

- ideal: one cache of unlimited size seeing every request in trace order; a request hits its longest
  run of leading blocks seen before (the first miss ends the match). No policy can beat it.
- capacity: the same with one LRU cache as large as the whole cluster's KV cache; what perfect
  placement could keep with this much memory. Blocks are touched tail-first so a prefix's head is
  evicted last.

Both are token-weighted (a partial tail block counts its real length) and chain blocks by prefix,
as ``../shared/traces/trace_stats.py`` does, so Mooncake numbers match the trace README.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

from epp.replay.traces.model import TraceRequest


@dataclass(frozen=True, slots=True)
class Chain:
    """A request's blocks as prefix-chain node ids (equal node ⇔ equal prefix), with token counts."""

    nodes: tuple[int, ...]
    tokens: tuple[int, ...]


def chains(requests: Sequence[TraceRequest], block_tokens: int) -> list[Chain]:
    """Each block's node is the hash of (parent node, block content): equal prefixes, equal nodes.

    Python's tuple hash over ints is deterministic and 64-bit, so a false match needs a collision
    among a few million nodes (~1e-7); interning every node in a dict instead costs gigabytes on
    an hour of unique prompts.
    """
    out: list[Chain] = []
    for request in requests:
        parent = -1
        nodes: list[int] = []
        counts: list[int] = []
        for key, n in request.prompt.blocks(block_tokens):
            parent = hash((parent, key))
            nodes.append(parent)
            counts.append(n)
        out.append(Chain(tuple(nodes), tuple(counts)))
    return out


def _hit_tokens(chain: Chain, cached: set[int] | OrderedDict[int, None]) -> int:
    hit = 0
    for node, n in zip(chain.nodes, chain.tokens):
        if node not in cached:
            break
        hit += n
    return hit


def ideal_hit_ratio(request_chains: Sequence[Chain]) -> float:
    """Cached ÷ prompt tokens with an unlimited cache; 0 for an empty trace."""
    seen: set[int] = set()
    hit = total = 0
    for chain in request_chains:
        hit += _hit_tokens(chain, seen)
        total += sum(chain.tokens)
        seen.update(chain.nodes)
    return hit / total if total else 0.0


def capacity_hit_ratio(request_chains: Sequence[Chain], capacity_blocks: int) -> float:
    """Cached ÷ prompt tokens with one LRU cache of ``capacity_blocks`` blocks."""
    lru: OrderedDict[int, None] = OrderedDict()
    hit = total = 0
    for chain in request_chains:
        hit += _hit_tokens(chain, lru)
        total += sum(chain.tokens)
        for node in reversed(chain.nodes):
            if node in lru:
                lru.move_to_end(node)
            else:
                lru[node] = None
        while len(lru) > capacity_blocks:
            lru.popitem(last=False)
    return hit / total if total else 0.0
