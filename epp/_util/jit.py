"""Compile a plain Python function once per process with numba, cached on disk where that is possible.

The TTFT scorer's per-pick arithmetic is a few dozen operations over one array per candidate: as numpy
calls each costs ~0.3–1 µs of dispatch whatever the endpoint count, compiled it is one call
(bench/RESULTS.md, branch ``pickjit``). ``compiled(function, signature)`` returns the machine-code
version, built eagerly for that one signature (a call with other argument types raises ``TypeError``
instead of compiling again on the pick path) and memoised, so every scheduler of the process shares it.

numba is imported here, on the first call, not at import: ~0.2 s that only a process that builds such a
scorer pays. The compiled code is cached next to the source (``__pycache__``), else in numba's user-wide
cache directory (``NUMBA_CACHE_DIR`` overrides both): a later process loads it in milliseconds instead
of compiling for about a second. When no cache directory is writable, or reading or writing the cache
fails, the function is compiled without a cache (a warning says why) — slower to start, never a crash.
"""

from __future__ import annotations

import functools
import logging
import pickle
import warnings
from collections.abc import Callable
from typing import TypeVar, cast

log = logging.getLogger(__name__)

F = TypeVar("F", bound=Callable[..., object])


def compiled(function: F, signature: str) -> F:
    """``function`` compiled in nopython mode for ``signature`` (numba's signature string)."""
    return cast(F, _compile(function, signature))


@functools.cache
def _compile(function: Callable[..., object], signature: str) -> Callable[..., object]:
    import numba  # ~0.2 s, only where a kernel is needed

    try:
        with warnings.catch_warnings():
            # numba warns (and does not cache) when it cannot; that is the fallback below, not an error
            warnings.simplefilter("error", numba.NumbaWarning)
            return cast(Callable[..., object], numba.njit(signature, cache=True)(function))
    except (RuntimeError, OSError, EOFError, pickle.UnpicklingError, numba.NumbaWarning) as e:
        # no writable cache directory (RuntimeError), an I/O error, an unreadable cache file
        log.warning("numba cannot cache %s (%s: %s); compiling it without a cache, which takes about a second "
                    "at every start — set NUMBA_CACHE_DIR to a writable directory", function.__qualname__,
                    type(e).__name__, e)
    return cast(Callable[..., object], numba.njit(signature, cache=False)(function))
