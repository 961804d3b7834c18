"""Engine time for a prompt, with the simulator's calibrated latency model (``epp.engine.latency``).

A vLLM-shaped engine prefills a prompt in chunks of at most ``max_num_batched_tokens`` tokens per
iteration, and every iteration also carries one token for each running decode (which take the budget
first) and reads their whole KV context. ``prefill_seconds`` walks those chunks exactly as
``EngineCore`` times them, so the router's prediction and the replay's engines agree by construction;
only the inputs (how many decodes, how much context, what is cached) are estimates.

``prefill_seconds_array`` does the same for many endpoints at once (numpy, one row per endpoint): the
same IEEE operations in the same order as ``LatencyModel.step`` (jitter is off; its ``lora_loads`` term
is 0 and adding 0.0 is exact), so every element equals ``prefill_seconds`` bit for bit.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from epp.engine.config import PROFILES, EngineConfig
from epp.engine.latency import LatencyModel

Ints = npt.NDArray[np.int64]
Floats = npt.NDArray[np.float64]

MIN_CHUNK = 16
"""Prefill tokens per iteration when decodes use up the whole budget (the engine still makes progress
as decodes finish; this keeps the estimate finite and very large instead of infinite)."""


@dataclass(frozen=True, slots=True)
class EngineShape:
    """The engine knobs a pool's prediction depends on (vLLM names; defaults are vLLM's)."""

    profile: str = "llama-3.1-8b-h100"
    block_size: int = 16
    max_num_batched_tokens: int = 8192
    step_floor_seconds: float = 0.002
    gpu_memory_utilization: float = 0.9

    def __post_init__(self) -> None:
        if self.profile not in PROFILES:
            raise ValueError(f"unknown latency profile {self.profile!r} (known: {', '.join(PROFILES)})")
        if self.block_size < 1 or self.max_num_batched_tokens < 1:
            raise ValueError("block size and max_num_batched_tokens must be at least 1")

    def engine_config(self) -> EngineConfig:
        return EngineConfig(
            profile=self.profile, block_size=self.block_size, max_num_batched_tokens=self.max_num_batched_tokens,
            step_floor_seconds=self.step_floor_seconds, gpu_memory_utilization=self.gpu_memory_utilization,
        )


class PrefillCost:
    """Seconds of engine iterations, from one ``LatencyModel`` (jitter off: a prediction is a mean)."""

    __slots__ = ("budget", "kv_capacity_tokens", "latency")

    def __init__(self, shape: EngineShape) -> None:
        config = shape.engine_config()
        self.latency: LatencyModel = config.latency_model()
        self.budget = shape.max_num_batched_tokens
        self.kv_capacity_tokens = config.total_gpu_blocks * shape.block_size
        """The profile's KV cache in tokens: used when an endpoint does not report its own."""

    def prefill_seconds(self, new: int, cached: int, decodes: int, decode_context: int) -> float:
        """Compute ``new`` prompt tokens on top of ``cached`` ones while ``decodes`` sequences holding
        ``decode_context`` tokens in total decode alongside, chunk by chunk until the first token."""
        latency = self.latency
        chunk_max = max(MIN_CHUNK, self.budget - decodes)
        read = decode_context + decodes
        seconds = 0.0
        done = cached
        left = new
        while left > 0:
            chunk = min(left, chunk_max)
            seconds += latency.step(chunk + decodes, read, latency.prefill_attention(done, chunk))
            done += chunk
            left -= chunk
        return seconds

    def decode_step_seconds(self, decodes: int, decode_context: int) -> float:
        """One pure-decode iteration (0 when nothing decodes)."""
        if decodes <= 0:
            return 0.0
        return self.latency.step(decodes, decode_context + decodes, 0.0)

    def walk_terms(self, decodes: int, decode_context: int) -> tuple[int, float]:
        """What every chunk of a prefill next to these decodes shares: the chunk cap and the seconds
        spent reading the decodes' KV (``prefill_seconds_array`` takes them per row)."""
        return max(MIN_CHUNK, self.budget - decodes), (decode_context + decodes) * self.latency.kv_read_per_token

    def prefill_seconds_array(
        self, new: Ints, cached: Ints, decodes: Ints, chunk_max: Ints, read_seconds: Floats
    ) -> Floats:
        """``prefill_seconds`` element-wise (``chunk_max``, ``read_seconds``: the decodes' ``walk_terms``;
        arguments broadcast). All elements walk their chunks together; one whose prompt is done adds
        nothing (the first step is taken as is: 0.0 + step is exact)."""
        latency = self.latency
        kv_read, b = latency.kv_read_per_token, latency.b
        seconds: Floats | None = None
        done = cached
        left = new
        while True:
            active = left > 0
            live = np.count_nonzero(active)
            if seconds is not None and not live:
                return seconds
            chunk = np.minimum(left, chunk_max)
            end = done + chunk
            attention = np.maximum(b * chunk * (done + chunk / 2), end * kv_read)
            linear = np.maximum(latency.weight_read, latency.a * (chunk + decodes))
            step = latency.floor + linear + read_seconds + attention
            if live == active.size:  # every element still has a chunk (np.where costs more than the add)
                seconds = step if seconds is None else seconds + step
            else:
                seconds = np.where(active, step, 0.0) if seconds is None else np.where(active, seconds + step, seconds)
            done = end
            left = left - chunk
