"""The approximate prefix index: which endpoints have recently been sent which prompt blocks.

One table shared by all endpoints, built for a small, measured footprint (16 bytes per slot, 1.6
slots per entry of capacity: ~26 bytes per cached (block, endpoint) entry when every endpoint is at
capacity, ≤ 47 just after the endpoint slots double; ``bench/schedule.py`` measures it) and for
lookups that cost a fixed handful of vectorised numpy operations whatever the number of endpoints:

* Entries are ``(block hash, endpoint slot, generation)`` triples in a set-associative table: a hash
  lives in one bucket of ``WAYS`` slots (hash modulo the bucket count), so a lookup gathers ``WAYS``
  slots per block and never probes. A lookup first compares each slot's 16-bit tag (the key's top bits:
  a bucket's tags are 64 bytes, its keys 256) and then only the full keys of the slots whose tag
  matched, so a long prompt gathers a quarter of the memory. A block cached on several endpoints takes one slot per endpoint; a block
  shared by more endpoints than a bucket holds keeps only its most recently touched owners (the
  index approximates engine caches, as the reference's does).
* Per-endpoint LRU with capacity ``C`` is generational: an endpoint's touches fill generations of
  ``ceil(C / G)`` entries (G = min(8, C)) and an entry is live while its generation is among the
  endpoint's newest G. An endpoint therefore holds its most recent ``C·(G−1)/G`` to ``C`` distinct
  blocks (exactly its ``C`` most recent when ``C ≤ 8``), and expired entries are simply free slots: no
  per-entry links, no sweeps. Removing an endpoint expires all its entries at once.
* New entries go where a per-bucket clock hand points, skipping live entries; a bucket full of live
  entries overwrites the one under the hand (the least recently written).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from epp._util.hashing import hash_array
from epp.datastore import Endpoint

WAYS = 32
GENERATIONS = 8
_SLOTS_PER_ENTRY = 1.6  # table slots per entry of full capacity: a bucket overflows with p < 1e-3
_MIN_ENDPOINTS = 8

# Blocks (64 KB of text) from which a lookup compares slot tags before keys: below it the gathered keys
# fit the CPU caches and one pass over them wins (measured: tags lose up to ~500 blocks, win from ~1,000).
_TAGGED_FROM = 1024
U64 = npt.NDArray[np.uint64]
Ints = npt.NDArray[np.intp]


class BlockIndex:
    """Approximate per-endpoint LRU of prompt-block hashes (see the module docstring for the layout).

    ``match`` follows the reference: walk the blocks from the first, stop at the first block no
    endpoint has, and count per endpoint the blocks it has before that point.
    """

    def __init__(self, capacity_per_endpoint: int = 31250) -> None:
        if capacity_per_endpoint < 1:
            raise ValueError("lruCapacityPerServer must be at least 1")
        self.capacity = capacity_per_endpoint
        self._gens = min(GENERATIONS, capacity_per_endpoint)
        self._gen_size = math.ceil(capacity_per_endpoint / self._gens)
        self._slot_of: dict[str, int] = {}
        self._version = 0  # bumped by every change to the table
        self._last: _Lookup | None = None
        self._allocate(_MIN_ENDPOINTS)

    # -- layout ------------------------------------------------------------------------------
    def _allocate(self, endpoint_slots: int) -> None:
        buckets = max(1, math.ceil(_SLOTS_PER_ENTRY * endpoint_slots * self.capacity / WAYS))
        self._buckets = np.uint64(buckets)
        self._keys = np.zeros(buckets * WAYS, dtype=np.uint64)
        self._tags = np.zeros(buckets * WAYS, dtype=np.uint16)  # _tag(key) of each slot
        self._owners = np.zeros(buckets * WAYS, dtype=np.uint16)
        self._entry_gens = np.zeros(buckets * WAYS, dtype=np.uint32)
        self._hands = np.zeros(buckets, dtype=np.intp)
        # Current generation and its fill per endpoint slot. Starting at G makes never-written
        # table slots (generation 0) expired for every owner.
        self._current = np.full(endpoint_slots, self._gens, dtype=np.int64)
        self._fill = np.zeros(endpoint_slots, dtype=np.int64)
        used = set(self._slot_of.values())
        self._free_slots = [s for s in range(endpoint_slots - 1, -1, -1) if s not in used]

    def _grow(self) -> None:
        """Double the endpoint slots and re-place live entries (rare: only as endpoints are added)."""
        self._version += 1
        old_current, old_fill = self._current, self._fill
        live = self._live(self._owners, self._entry_gens)
        keys, owners, gens = self._keys[live], self._owners[live], self._entry_gens[live]
        self._allocate(2 * len(old_current))
        self._current[: len(old_current)] = old_current
        self._fill[: len(old_fill)] = old_fill
        self._place(keys, owners, gens.astype(np.int64))

    def _slot(self, endpoint: str) -> int:
        slot = self._slot_of.get(endpoint)
        if slot is None:
            if not self._free_slots:
                self._grow()
            slot = self._free_slots.pop()
            self._slot_of[endpoint] = slot
        return slot

    def _live(self, owners: npt.NDArray[np.uint16], gens: npt.NDArray[np.uint32]) -> npt.NDArray[np.bool_]:
        return (self._current[owners] - gens) < self._gens

    def _key_hits(self, h: U64) -> tuple[Ints, Ints, Ints]:
        """(row, table position) of every slot whose key equals a block hash, live or not, and each
        hash's bucket (an ``add`` places the new ones there: computed once)."""
        buckets = (h % self._buckets).astype(np.intp)
        if len(h) < _TAGGED_FROM:  # a short prompt: comparing whole keys at once is cheaper than two passes
            flat = np.flatnonzero(self._keys.reshape(-1, WAYS).take(buckets, axis=0) == h[:, None])
            rows = flat // WAYS
            return rows, buckets[rows] * WAYS + (flat - rows * WAYS), buckets
        # Whole buckets' tags gathered as rows of the (buckets, WAYS) view: 3× faster than per-slot
        # indexing; flatnonzero + divmod, not a 2-D nonzero (10× cheaper for long prompts). Then the full
        # keys of the slots whose tag matched: a tag collision is dropped there.
        flat = np.flatnonzero(self._tags.reshape(-1, WAYS).take(buckets, axis=0) == _tag(h)[:, None])
        rows = flat // WAYS
        pos = buckets[rows] * WAYS + (flat - rows * WAYS)
        same = self._keys[pos] == h[rows]
        return rows[same], pos[same], buckets

    # -- PrefixIndex ---------------------------------------------------------------------------
    def _lookup(self, hashes: Sequence[int]) -> _Lookup:
        """Hashes as an array plus their key hits. The last lookup is reused while the table is unchanged
        and the hashes are the same (the same list, or equal values: a prompt resent, hashed anew per
        request), so the PreRequest ``add`` after a ``match`` and a repeated prompt cost no second gather."""
        last = self._last
        h: U64 | None = None
        if last is not None and last.version == self._version:
            if last.hashes is hashes:
                return last
            if len(last.h) == len(hashes) and last.h[-1] == hashes[-1]:  # cheap test before the array
                h = hash_array(hashes)
                if np.array_equal(h, last.h):
                    last.hashes = hashes
                    return last
        if h is None:
            h = hash_array(hashes)
        rows, pos, buckets = self._key_hits(h)
        self._last = _Lookup(hashes, self._version, h, rows, pos, buckets)
        return self._last

    def match(self, hashes: Sequence[int], endpoints: Sequence[str]) -> list[int]:
        if not hashes:
            return [0] * len(endpoints)
        found = self._lookup(hashes)
        counts = found.counts
        if counts is None:
            counts = found.counts = self._held(found)
        slot_of = self._slot_of
        return [counts[slot_of[e]] if e in slot_of else 0 for e in endpoints]

    def _held(self, found: _Lookup) -> list[int]:
        """Per endpoint slot, the leading blocks of ``found`` held before the first block no endpoint has."""
        rows, pos = found.rows, found.pos
        owners = self._owners[pos]
        live = self._live(owners, self._entry_gens[pos])
        rows, owners = rows[live], owners[live]
        present = np.zeros(len(found.h) + 1, dtype=bool)
        present[rows] = True
        stop = int(present.argmin())
        if stop == 0:
            return [0] * len(self._current)
        counts: list[int] = np.bincount(owners[rows < stop], minlength=len(self._current)).tolist()
        return counts

    def add(self, endpoint: str, hashes: Sequence[int]) -> None:
        """Record that ``endpoint`` now holds ``hashes`` (a prompt's chain, first block first).

        Blocks are touched last-to-first, so a prompt's first blocks are its most recent and are
        evicted last: what stays cached of a prompt is a prefix, as in an engine's cache.
        """
        if not hashes:
            return
        slot = self._slot(endpoint)
        found = self._lookup(hashes)
        if slot in found.settled:  # this endpoint already holds all of them in its newest generation
            return
        h, rows, pos = found.h, found.rows, found.pos
        current, fill = int(self._current[slot]), int(self._fill[slot])
        if len(rows) == 0:  # no block in the table (a novel prompt): all of them are new entries
            self._version += 1
            n = len(h)
            row_gens = current + (fill + np.arange(n - 1, -1, -1)) // self._gen_size  # as below, all touched
            self._advance(slot, current, fill, n)
            self._place(h, slot, row_gens, found.buckets)
            return
        gens = self._entry_gens[pos]
        mine = (self._owners[pos] == slot) & (current - gens < self._gens)
        rows, pos, gens = rows[mine], pos[mine], gens[mine]
        touched = np.ones(len(h), dtype=bool)
        touched[rows[gens == current]] = False  # already in the newest generation: nothing to do
        n = int(touched.sum())
        if n == 0:
            found.settled.add(slot)
            return
        self._version += 1
        # Touch order is last block first; the j-th touch goes into generation
        # current + (fill + j) // size, so a full generation rolls over to the next.
        later = np.cumsum(touched[::-1])[::-1] - 1  # touched rows after each row
        row_gens = current + (fill + later) // self._gen_size
        self._advance(slot, current, fill, n)
        promote = touched[rows]
        self._entry_gens[pos[promote]] = row_gens[rows[promote]]
        touched[rows] = False
        if touched.any():
            self._place(h[touched], slot, row_gens[touched], found.buckets[touched])

    def _advance(self, slot: int, current: int, fill: int, touches: int) -> None:
        """The endpoint's generation counters after ``touches`` more touches."""
        last = fill + touches - 1
        self._current[slot] = current + last // self._gen_size
        self._fill[slot] = last % self._gen_size + 1

    def _place(self, keys: U64, owners: npt.NDArray[np.uint16] | int, gens: npt.NDArray[np.int64],
               buckets: Ints | None = None) -> None:
        """Write new entries. Each bucket has a clock hand; a new entry takes the slot under the hand,
        skipping live entries (up to a bucket's worth of tries, then it overwrites). The hand's slot was
        written a whole table's worth of inserts ago, so it has almost always expired: the common case
        costs a few operations on ``len(keys)`` elements, not a scan of the buckets.

        Rows landing on the same slot are resolved in rounds: numpy keeps the last write, the others
        go round again. ``owners``: one endpoint slot for all (an ``add``: a slot written this round is
        then that owner's, so only its key tells whether another row took it) or one per key;
        ``buckets``: the keys' buckets when the caller has them (the lookup before).
        """
        if buckets is None:
            buckets = (keys % self._buckets).astype(np.intp)
        tries = 0  # rounds so far: every key left has been skipped or overwritten in each
        while len(keys):
            hands = self._hands[buckets]
            chosen = buckets * WAYS + hands
            self._hands[buckets] = (hands + 1) & (WAYS - 1)
            # a bucket's worth of tries made: a key left overwrites the slot under the hand, live or not
            skip = self._live(self._owners[chosen], self._entry_gens[chosen]) if tries < WAYS else np.zeros(len(keys), dtype=bool)
            some = skip.any()
            if some:
                write = ~skip
                chosen_w, keys_w, gens_w = chosen[write], keys[write], gens[write]
                owners_w = owners if isinstance(owners, int) else owners[write]
            else:  # nothing live under the hands (the first round, mostly): every key is written
                chosen_w, keys_w, owners_w, gens_w = chosen, keys, owners, gens
            self._keys[chosen_w] = keys_w
            self._tags[chosen_w] = _tag(keys_w)
            self._owners[chosen_w] = owners_w
            self._entry_gens[chosen_w] = gens_w
            lost = self._keys[chosen_w] != keys_w  # another row took the slot
            if not isinstance(owners_w, int):
                lost |= self._owners[chosen_w] != owners_w
            if some:
                skip[write] = lost
            else:
                skip = lost
            keys, gens, buckets = keys[skip], gens[skip], buckets[skip]
            if not isinstance(owners, int):
                owners = owners[skip]
            tries += 1

    def discard(self, endpoint: str, hashes: Sequence[int]) -> None:
        """Expire ``endpoint``'s entries for these blocks (generation 0 is expired for every owner)."""
        slot = self._slot_of.get(endpoint)
        if slot is None or not hashes:
            return
        pos = self._lookup(hashes).pos
        mine = pos[self._owners[pos] == slot]
        if len(mine):
            self._version += 1
            self._entry_gens[mine] = 0

    def remove(self, endpoint: str) -> None:
        """Forget an endpoint: its entries expire at once and its slot is reused later."""
        slot = self._slot_of.pop(endpoint, None)
        if slot is not None:
            self._version += 1
            self._current[slot] += self._gens + 1
            self._fill[slot] = 0
            self._free_slots.append(slot)

    # -- DatastoreListener -------------------------------------------------------------------------
    def endpoint_added(self, endpoint: Endpoint) -> None:
        """Reserve the endpoint's slot now, so growing the table happens at discovery, not in a pick."""
        self._slot(endpoint.name)

    def endpoint_removed(self, endpoint: Endpoint) -> None:
        self.remove(endpoint.name)

    # -- introspection ---------------------------------------------------------------------------
    def entries(self) -> int:
        """Live (block, endpoint) entries."""
        return int(self._live(self._owners, self._entry_gens).sum())

    @property
    def nbytes(self) -> int:
        """Bytes held by the table and the per-endpoint counters."""
        arrays = (self._keys, self._tags, self._owners, self._entry_gens, self._hands, self._current, self._fill)
        return sum(a.nbytes for a in arrays)


class _Lookup:
    """One lookup's key hits, valid while the table's version is ``version``, with what was derived
    from them since: the match per endpoint slot, and the slots an ``add`` found nothing to do for."""

    __slots__ = ("buckets", "counts", "h", "hashes", "pos", "rows", "settled", "version")

    def __init__(self, hashes: Sequence[int], version: int, h: U64, rows: Ints, pos: Ints, buckets: Ints) -> None:
        self.hashes = hashes
        self.version = version
        self.h = h
        self.rows = rows
        self.pos = pos
        self.buckets = buckets
        self.counts: list[int] | None = None
        self.settled: set[int] = set()


def _tag(keys: U64) -> npt.NDArray[np.uint16]:
    """A key's top 16 bits (the bucket is chosen by its value modulo the bucket count, so the top
    bits still tell apart the keys of one bucket)."""
    return (keys >> np.uint64(48)).astype(np.uint16)
