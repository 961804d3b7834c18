"""KV-event decode cost per batch: vLLM 0.32's tagged maps vs. the older tagged arrays, measured side by
side on the captured batches (tests/kvevents/data), and what that is per engine step.

Run: python bench/kv_events_decode.py [--repeat N]

Columns (µs per batch, best of 5 rounds): ``map`` and ``array`` decode the same batch in the two
encodings with ``decode_message`` (msgpack unpack + field-by-name decoding); ``unpack`` is msgpack
alone on the map form, the floor any decoder pays. The subscriber decodes one batch per engine step
on the event loop; the last line is the share of one core a 100-engine pool at 50 steps/s would take.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import msgpack

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from epp.kvevents.decode import decode_message  # noqa: E402
from tests.kvevents.captures import frames, messages  # noqa: E402

from metrics_parse import per_call_us  # noqa: E402  (bench/ is on sys.path when run as a script; best of 5)

ENGINES, STEPS_PER_SECOND = 100, 50


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=2000)
    args = parser.parse_args()
    cases = {
        "store 5 blocks x 128 tokens": messages("vllm_events1")[0],
        "store 1 block (continuation)": messages("vllm_events1")[2],
        "8 removals + stores (eviction)": messages("eviction_events")[1],
        "store, 32-byte hashes": messages("vllm_bytes_events")[0],
    }
    print(f"{'batch':34} {'map':>8} {'array':>8} {'unpack':>8} {'map/array':>10}")
    worst = 0.0
    for name, message in cases.items():
        as_map, as_array = frames(message, "map"), frames(message, "array")
        m = per_call_us(lambda: decode_message(as_map), args.repeat)
        a = per_call_us(lambda: decode_message(as_array), args.repeat)
        u = per_call_us(lambda: msgpack.unpackb(as_map[2], raw=False, strict_map_key=False), args.repeat)
        worst = max(worst, m)
        print(f"{name:34} {m:8.1f} {a:8.1f} {u:8.1f} {m / a:10.2f}")
    share = worst * 1e-6 * ENGINES * STEPS_PER_SECOND
    print(f"{ENGINES} engines x {STEPS_PER_SECOND} batches/s at the slowest batch: {share:.1%} of one core")


if __name__ == "__main__":
    main()
