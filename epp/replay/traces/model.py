"""Trace requests as replay sees them: arrival time, a compact prompt, output length.

Prompts are kept compact (runs of consecutive token ids, or a literal token list) and turned into a
token list only when the request is dispatched, so an hour of 15k-token prompts never sits in memory
as Python ints.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class SegmentPrompt:
    """A prompt made of runs ``(first_token_id, length)`` of consecutive token ids.

    Two prompts share a cached prefix exactly as far as their runs agree, so runs can stand for
    Mooncake hash ids (id b → ``range(b*512, b*512+512)``), shared system prompts, or unique text.
    """

    segments: tuple[tuple[int, int], ...]

    @property
    def length(self) -> int:
        return sum(n for _, n in self.segments)

    def tokens(self) -> list[int]:
        out: list[int] = []
        for start, n in self.segments:
            out.extend(range(start, start + n))
        return out

    def blocks(self, block_tokens: int) -> Iterator[tuple[object, int]]:
        """``(content key, tokens)`` per block of ``block_tokens``, the partial tail included.

        The key identifies the block's token content without materialising it: a full block inside one
        run is its first id (an int); any other block is the tuple of run pieces it covers. Adjacent
        runs that continue each other are merged first, so equal content always gets equal keys.
        """
        pieces: list[tuple[int, int]] = []
        filled = 0
        for start, n in _merged(self.segments):
            if filled:
                take = min(n, block_tokens - filled)
                pieces.append((start, take))
                start += take
                n -= take
                filled += take
                if filled < block_tokens:
                    continue
                yield tuple(pieces), block_tokens
                pieces, filled = [], 0
            full = n - n % block_tokens
            for first in range(start, start + full, block_tokens):
                yield first, block_tokens
            if n > full:
                pieces, filled = [(start + full, n - full)], n - full
        if filled:
            yield tuple(pieces), filled


def _merged(segments: tuple[tuple[int, int], ...]) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for start, n in segments:
        if out and out[-1][0] + out[-1][1] == start:
            out[-1] = (out[-1][0], out[-1][1] + n)
        elif n:
            out.append((start, n))
    return out


@dataclass(frozen=True, slots=True)
class TokenPrompt:
    """A prompt given as explicit token ids (from a trace's ids, or text mapped to ids)."""

    token_ids: tuple[int, ...]

    @property
    def length(self) -> int:
        return len(self.token_ids)

    def tokens(self) -> list[int]:
        return list(self.token_ids)

    def blocks(self, block_tokens: int) -> Iterator[tuple[object, int]]:
        ids = self.token_ids
        for i in range(0, len(ids), block_tokens):
            chunk = ids[i : i + block_tokens]
            yield chunk, len(chunk)


Prompt = SegmentPrompt | TokenPrompt


@dataclass(frozen=True, slots=True)
class TraceRequest:
    """One request to replay. ``arrival`` is seconds from the trace start, already de-bucketed."""

    arrival: float
    prompt: Prompt
    output_tokens: int
    model: str | None = None
    session: str | None = None
    priority: int = 0


@dataclass(frozen=True, slots=True)
class TraceIssue:
    """A line that was skipped, with its 1-based line number, so users can fix their file."""

    line: int
    message: str

    def __str__(self) -> str:
        return f"line {self.line}: {self.message}"


@dataclass(slots=True)
class Trace:
    """Requests sorted by arrival, plus what the reader skipped.

    ``block_tokens`` is the granularity the trace states sharing at (512 for Mooncake hash ids), used
    for the ideal/capacity bounds; ``None`` means "use the engine's block size".
    """

    name: str
    format: str
    requests: list[TraceRequest]
    issues: list[TraceIssue] = field(default_factory=list)
    block_tokens: int | None = None

    @property
    def duration(self) -> float:
        return self.requests[-1].arrival - self.requests[0].arrival if self.requests else 0.0

    @property
    def mean_rate(self) -> float:
        """Requests per second over the trace's span (0 for a single instant)."""
        d = self.duration
        return (len(self.requests) - 1) / d if d > 0 else 0.0

    def head(self, max_requests: int | None) -> Trace:
        if not max_requests or max_requests >= len(self.requests):
            return self
        return Trace(self.name, self.format, self.requests[:max_requests], self.issues, self.block_tokens)

