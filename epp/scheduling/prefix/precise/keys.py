"""How the precise index keys engine-reported blocks.

A block is keyed by the chained hash of its token ids (``chain_hashes(token_blocks(...),
seed)``, seed = the LoRA adapter's name or else the model in the event topic, plus the
``cache_salt``), recomputed from
``BlockStored.token_ids`` and the parent block's key — the way llm-d's indexer maps engine keys to
request keys. The request side hashes its prompt the same way (``tokens.engine_block_hashes``), so
keys agree whatever hash function the engine uses (vLLM's sha256, SGLang's). Engine hashes are kept
only where they differ from the key (an alias map, empty for ``epp sim`` whose hashes are these
keys), to resolve later ``BlockRemoved`` and parent references. A store whose parent is unknown
(events before we subscribed) is keyed by the engine hashes themselves: it matches nothing unless
the engine hashes like epp, never something wrong. The rest of vLLM's per-block ``extra_keys``
(multimodal identifiers, prompt-embedding digests) is hashed into the key (``block_extras``), so
such blocks never match a text prompt with the same placeholder tokens. Only KV-cache groups of
full attention are indexed (``GroupFilter``: hybrid models' sliding-window groups hold suffixes).
"""

from __future__ import annotations

from collections.abc import Sequence

import msgpack

from epp._util.hashing import chain_hashes, chain_hashes_with_extras, seed_hash, token_blocks
from epp.contracts.kv_events import Stored
from epp.scheduling.prefix.precise.view import EndpointView


def block_extras(event: Stored) -> tuple[str | None, list[bytes | None] | None]:
    """(cache_salt, per-block extra bytes) from a store's ``extra_keys``, as vLLM builds them
    (``kv_cache_utils.generate_block_hash_extra_keys``): each block's keys are the LoRA name, then
    multimodal identifiers, then ``cache_salt`` (first block of a prompt only), then prompt-embedding
    digests. The LoRA name already seeds the chain and the salt seeds it too (as the request side
    does, ``request_seed``; SGLang names it in ``cache_salt``), so only what remains — multimodal and embedding keys, which no text
    request can reproduce — is hashed into the block, serialized with msgpack."""
    if event.extra_keys is None:
        return event.cache_salt, None
    salt: str | None = event.cache_salt
    extras: list[bytes | None] = []
    for i, keys in enumerate(event.extra_keys):
        rest = [k for k in keys or () if k != event.lora_name]
        if i == 0 and event.parent_hash is None and event.cache_salt is None:
            strings = [k for k in rest if isinstance(k, str)]
            if strings:
                salt = strings[-1]
                rest.remove(salt)
        extras.append(msgpack.packb(rest) if rest else None)
    return salt, extras if any(extras) else None


def block_keys(view: EndpointView, event: Stored, model: str | None) -> Sequence[int]:
    """The keys of a store's blocks: chained from its parent's key (or the model's seed for a root
    block); the engine's own hashes when the chain cannot be followed (unknown parent, no model yet,
    token ids that do not fill the blocks)."""
    hashes = event.block_hashes
    if len(event.token_ids) != len(hashes) * event.block_size:
        return hashes
    salt, extras = block_extras(event)
    if event.parent_hash is None:
        seed_name = event.lora_name or model or view.model
        if seed_name is None:
            return hashes
        parent = seed_hash(seed_name + (salt or ""))
    else:
        parent = view.alias.get(event.parent_hash, event.parent_hash)
        if parent not in view.held and parent not in view.suspect:
            return hashes
    blocks = token_blocks(event.token_ids, event.block_size)
    return chain_hashes(blocks, parent) if extras is None else chain_hashes_with_extras(blocks, parent, extras)
