"""Work cut where it may leave the event loop's thread, and who runs it.

Some work a request hook does is heavy but pure: the rest of a new 32K-token prompt is encoded by
the Rust tokenizer in 50-80 ms, which on the event loop stalls every other stream of ``epp serve``.
Such work is written as a ``Split``: ``compute`` reads no state another thread may change (it may run
on any thread) and returns the step that applies its result, which runs on the owner's thread. The
code that builds a ``Split`` is the same everywhere; only the ``Offload`` that runs it differs:
``INLINE`` runs it at once (replay, tests: deterministic, as before), the data layer's thread offload
runs ``compute`` on a worker and the applying step on the event loop (``epp.datalayer.offload``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, Protocol, TypeVar

__all__ = ["INLINE", "Inline", "Offload", "Offloading", "Split"]

T = TypeVar("T")
U = TypeVar("U")
R = TypeVar("R")


class Split(Generic[T]):
    """A computation of a ``T`` in two steps: ``compute()`` (any thread; touches no shared mutable
    state) returns the step that finishes it (the owner's thread)."""

    __slots__ = ("_compute",)

    def __init__(self, compute: Callable[[], Callable[[], T]]) -> None:
        self._compute = compute

    @classmethod
    def of(cls, compute: Callable[[], R], finish: Callable[[R], T]) -> Split[T]:
        """``finish(compute())``, cut between the two calls."""
        def computed() -> Callable[[], T]:
            value = compute()
            return lambda: finish(value)

        return cls(computed)

    @classmethod
    def ready(cls, value: T) -> Split[T]:
        """Nothing to compute."""
        return cls(lambda: lambda: value)

    def compute(self) -> Callable[[], T]:
        """The part that may run on another thread; returns the finishing step."""
        return self._compute()

    def then(self, after: Callable[[T], U]) -> Split[U]:
        """``after`` applied to the result, on the owner's thread too."""
        compute = self._compute

        def computed() -> Callable[[], U]:
            finish = compute()
            return lambda: after(finish())

        return Split(computed)

    def run(self) -> T:
        """Both steps now, on this thread."""
        return self._compute()()


class Offload(Protocol):
    """Runs ``Split`` jobs whose results end on the owner's thread."""

    def submit(self, job: Split[None], discard: Callable[[], None]) -> bool:
        """Run ``job``; False when it is refused (the offload is full or stopped: nothing ran). Where the
        job was accepted but cannot finish (its ``compute`` raised, or the offload stopped first),
        ``discard`` is called on the owner's thread instead of the finishing step."""
        ...


class Offloading(Protocol):
    """A plugin with ``Split`` work that may leave the event loop while serving: the data layer hands
    it an offload at start (``epp.contracts.datalayer.DataNeeds.offloading``); it uses ``INLINE`` until then."""

    def offload_to(self, offload: Offload) -> None: ...


class Inline:
    """Runs a job at once on the caller's thread (replay and tests: in order, in virtual time)."""

    __slots__ = ()

    def submit(self, job: Split[None], discard: Callable[[], None]) -> bool:
        job.run()
        return True


INLINE = Inline()
