"""Whether a prompt prefix one endpoint was sent is still in its KV cache.

The prefix index says which blocks an endpoint was sent, not whether they are still cached. An engine
keeps a prompt's blocks while a request using them runs; once the last one finishes they sit in its
free queue, and every block allocated later (other prompts, outputs) evicts the least recently freed
one. So per endpoint this tracks:

* ``written`` — tokens epp sent the endpoint to write so far (uncached prompt tokens and outputs);
* marks on every ``stride``-th block hash of each routed prompt and on its last block: how many
  requests holding it are in flight, and the ``written`` count when the last of them was released.

``written_since`` looks up the mark for a match of ``k`` blocks at block ``k`` (a prompt that extends an
earlier one, as chat turns do) or at the nearest stride boundary below it: 0 while a request holding
it is in flight (resident), else the tokens written since its release, which the predictor compares
with the KV space running sequences leave free. Released marks are kept least recently released first
and capped at ``limit``.
"""

from __future__ import annotations

from collections.abc import Sequence


class PrefixRecency:
    __slots__ = ("_fresh", "_held", "_limit", "_marks", "_requests", "_stride", "written")

    def __init__(self, stride: int = 64, limit: int = 65536) -> None:
        if stride < 1 or limit < 1:
            raise ValueError("stride and limit must be at least 1")
        self._stride = stride
        self._limit = limit
        self._marks: dict[int, int] = {}
        """Block hash → ``written`` when it was last released (or routed)."""
        self._held: dict[int, int] = {}
        """Block hash → requests in flight holding it."""
        self._requests: dict[str, list[int]] = {}
        self._fresh: dict[str, list[int]] = {}
        """Request → the keys it marked for the first time (``forget`` unmarks them)."""
        self.written = 0

    def __len__(self) -> int:
        return len(self._marks)

    def hold(self, request_id: str, hashes: Sequence[int], tokens_written: int) -> None:
        """A request with these prompt block hashes was sent here and will write ``tokens_written``."""
        self.release(request_id)
        self.written += tokens_written
        self._requests[request_id] = []
        self.extend(request_id, hashes)

    def extend(self, request_id: str, hashes: Sequence[int]) -> None:
        """The prompt of a request held here is ``hashes``, longer than ``hold`` was told (the rest was
        hashed after the pick): hold and mark the keys of the rest too."""
        keys = self._requests.get(request_id)
        if keys is None or not hashes:
            return
        stride = self._stride
        wanted = [hashes[i] for i in range(stride - 1, len(hashes), stride)]
        if len(hashes) % stride:
            wanted.append(hashes[-1])
        known = set(keys)
        new = [k for k in wanted if k not in known]
        held = self._held
        for key in new:
            held[key] = held.get(key, 0) + 1
        keys.extend(new)
        fresh = [k for k in new if k not in self._marks]
        if fresh:
            self._fresh.setdefault(request_id, []).extend(fresh)
        self._mark(new)

    def release(self, request_id: str) -> None:
        """The request is over: its prefix is now only cached, at the most recent end of the LRU."""
        keys = self._unhold(request_id)
        if keys is not None:
            self._mark(keys)

    def forget(self, request_id: str) -> None:
        """The request failed before the engine computed anything: it holds nothing any more, and the
        blocks it was the first to mark are not cached here (no mark left for them)."""
        fresh = self._fresh.get(request_id, ())
        self._unhold(request_id)
        for key in fresh:
            if key not in self._held:
                self._marks.pop(key, None)

    def _unhold(self, request_id: str) -> list[int] | None:
        self._fresh.pop(request_id, None)
        keys = self._requests.pop(request_id, None)
        if keys is None:
            return None
        held = self._held
        for key in keys:
            n = held[key] - 1
            if n:
                held[key] = n
            else:
                del held[key]
        return keys

    def written_since(self, hashes: Sequence[int], matched: int) -> int | None:
        """Tokens written since the first ``matched`` blocks of ``hashes`` were last in use here (0 while
        in use), or None when no mark covers them."""
        if matched <= 0 or matched > len(hashes):
            return None
        for pos in (matched - 1, matched // self._stride * self._stride - 1):
            if pos < 0:
                continue
            key = hashes[pos]
            if key in self._held:
                return 0
            seen = self._marks.get(key)
            if seen is not None:
                return self.written - seen
        return None

    def _mark(self, keys: list[int]) -> None:
        marks = self._marks
        for key in keys:
            marks.pop(key, None)
            marks[key] = self.written
        while len(marks) > self._limit:
            del marks[next(iter(marks))]
