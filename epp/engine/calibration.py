"""H100 measurements the latency model is fitted to (verbatim from the project's
calibration set, ``h100_llama_prefill_decode.json``; see ``epp.engine.latency`` for how they are used).

Kept as Python data so the engine stays free of file I/O. Times are milliseconds: ``prefill_ms`` rows are
``(cached, new, ms)`` for one forward pass over ``new`` prompt tokens on top of ``cached`` ones,
``decode_ms`` rows ``(batch, context, ms)`` for one decode step. Measured with eager PyTorch (no CUDA
graphs): small shapes are launch-bound, rows with a large ``cached`` prefix are inflated by how eager
attention materialises its mask.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType


@dataclass(frozen=True, slots=True)
class Calibration:
    """One model's measurements on one GPU."""

    prefill_ms: tuple[tuple[int, int, float], ...]
    decode_ms: tuple[tuple[int, int, float], ...]
    kv_bytes_per_token: int
    free_gpu_bytes_after_weights: int


H100: Mapping[str, Calibration] = MappingProxyType(
    {
        "llama-3.2-1b": Calibration(
            prefill_ms=(
                (0, 16, 14.967),
                (0, 512, 15.096),
                (0, 2048, 15.46),
                (0, 8192, 53.457),
                (0, 16384, 122.203),
                (1024, 16, 19.115),
                (1024, 512, 17.225),
                (1024, 2048, 17.297),
                (1024, 8192, 86.951),
                (1024, 16384, 271.767),
                (4096, 16, 17.09),
                (4096, 512, 17.053),
                (4096, 2048, 21.895),
                (4096, 8192, 102.0),
                (4096, 16384, 309.257),
                (16384, 16, 17.034),
                (16384, 512, 17.493),
                (16384, 2048, 36.981),
                (16384, 8192, 172.221),
                (16384, 16384, 395.902),
            ),
            decode_ms=(
                (1, 512, 15.179),
                (8, 512, 14.57),
                (32, 512, 14.589),
                (64, 512, 19.198),
                (1, 2048, 15.232),
                (8, 2048, 15.229),
                (32, 2048, 15.68),
                (64, 2048, 19.521),
                (1, 8192, 16.259),
                (8, 8192, 15.993),
                (32, 8192, 33.569),
            ),
            kv_bytes_per_token=32768,
            free_gpu_bytes_after_weights=81227087872,
        ),
        "llama-3.1-8b": Calibration(
            prefill_ms=(
                (0, 16, 31.245),
                (0, 512, 30.448),
                (0, 2048, 64.171),
                (0, 8192, 270.53),
                (0, 16384, 597.274),
                (1024, 16, 38.742),
                (1024, 512, 32.505),
                (1024, 2048, 74.838),
                (1024, 8192, 378.742),
                (1024, 16384, 1000.882),
                (4096, 16, 41.096),
                (4096, 512, 33.655),
                (4096, 2048, 87.619),
                (4096, 8192, 425.319),
                (4096, 16384, 1093.192),
                (16384, 16, 43.848),
                (16384, 512, 51.178),
                (16384, 2048, 140.738),
                (16384, 8192, 632.44),
                (16384, 16384, 1517.488),
            ),
            decode_ms=(
                (1, 512, 38.441),
                (8, 512, 34.268),
                (32, 512, 34.446),
                (64, 512, 28.584),
                (1, 2048, 31.723),
                (8, 2048, 33.984),
                (32, 2048, 41.408),
                (64, 2048, 70.261),
                (1, 8192, 45.464),
                (8, 8192, 41.307),
                (32, 8192, 124.923),
            ),
            kv_bytes_per_token=131072,
            free_gpu_bytes_after_weights=68046487552,
        ),
    }
)
