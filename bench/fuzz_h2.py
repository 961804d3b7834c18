"""Long run of the HTTP/2 frame-sequence fuzzer against epp's native transport (``make fuzz-h2``).

The same strategies and invariants as tests/extproc/h2/test_fuzz_frames.py (see tests/extproc/h2/fuzz_frames.py),
for many more examples: hypothesis runs in chunks of ``--chunk`` examples, each with its own seed (``--seed``
+ chunk number), until ``--examples`` or ``--seconds`` is reached. One server takes every example, so state
that leaks from one connection to the next (held requests, buffers, memory) shows up as a failed check or as
growth of the process's peak RSS, printed at the end with the outcome counts. Exit status 1 on the first
falsifying example (hypothesis prints it, shrunk).

    nice -n 10 python bench/fuzz_h2.py --seconds 600
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path

from hypothesis import HealthCheck, given, seed, settings

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests.extproc.h2.fuzz_frames import FrameFuzz, Op, sequences  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--examples", type=int, default=1_000_000, help="stop after this many examples")
    parser.add_argument("--seconds", type=float, default=600, help="stop after the chunk running at this time")
    parser.add_argument("--chunk", type=int, default=500, help="examples per hypothesis run (one seed each)")
    parser.add_argument("--seed", type=int, default=18, help="seed of the first chunk; chunk i uses seed + i")
    args = parser.parse_args()

    fuzz = FrameFuzz()
    started = time.monotonic()
    rss_start = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    done, chunk, rss_after_first = 0, 0, 0
    try:
        while done < args.examples and time.monotonic() - started < args.seconds:
            count = min(args.chunk, args.examples - done)

            @seed(args.seed + chunk)
            @settings(max_examples=count, deadline=None, database=None,
                      suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
            @given(sequence=sequences)
            def run(sequence: list[Op]) -> None:
                fuzz.check(sequence)

            try:
                run()
            except Exception as exc:
                notes = "\n".join(getattr(exc, "__notes__", []))[:4000]  # hypothesis's shrunk falsifying example
                print(f"FAILED in chunk {chunk} (seed {args.seed + chunk}): {exc!r}\n{notes}", file=sys.stderr)
                return 1
            done, chunk = done + count, chunk + 1
            if chunk == 1:
                rss_after_first = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            print(f"{time.monotonic() - started:7.1f} s  {done:7d} examples  {sum(fuzz.outcomes.values()):7d} sequences sent  "
                  f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB", flush=True)
    finally:
        fuzz.close()
    elapsed = time.monotonic() - started
    rss_end = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(f"\n{done} examples in {chunk} chunks (seeds {args.seed}..{args.seed + chunk - 1}), {elapsed:.0f} s, "
          f"{sum(fuzz.outcomes.values()) / elapsed:.0f} sequences/s, no failure")
    print("outcomes (hypothesis also sends sequences while generating and shrinking):")
    for outcome, n in fuzz.outcomes.most_common():
        print(f"  {outcome:12s} {n:8d}")
    print(f"peak RSS: {rss_start / 1024:.0f} MiB at start, {rss_after_first / 1024:.0f} MiB after the first chunk, "
          f"{rss_end / 1024:.0f} MiB at the end")
    return 0


if __name__ == "__main__":
    sys.exit(main())
