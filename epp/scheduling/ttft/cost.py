"""Engine time for a prompt, with the simulator's calibrated latency model (``epp.engine.latency``).

A vLLM-shaped engine prefills a prompt in chunks of at most ``max_num_batched_tokens`` tokens per
iteration, and every iteration also carries one token for each running decode (which take the budget
first) and reads their whole KV context. ``prefill_seconds`` walks those chunks exactly as
``EngineCore`` times them, so the router's prediction and the replay's engines agree by construction;
only the inputs (how many decodes, how much context, what is cached) are estimates.

The ``*_array`` twins do the same for many endpoints at once (numpy, one row per endpoint): the same
IEEE operations in the same order as ``LatencyModel.step`` (jitter is off; its ``lora_loads`` term is
0 and adding 0.0 is exact), so every element equals its scalar twin bit for bit.
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

    def prefill_seconds_array(self, new: Ints, cached: Ints, decodes: Ints, decode_context: Ints) -> Floats:
        """``prefill_seconds`` per row: all rows walk their chunks together, a row adding 0.0 (exact)
        once its prompt is done."""
        latency = self.latency
        chunk_max = np.maximum(MIN_CHUNK, self.budget - decodes)
        read_seconds = (decode_context + decodes) * latency.kv_read_per_token
        seconds = np.zeros(len(new))
        done = cached
        left = new
        while True:
            active = left > 0
            if not active.any():
                return seconds
            chunk = np.minimum(left, chunk_max)
            attention = np.maximum(latency.b * chunk * (done + chunk / 2), (done + chunk) * latency.kv_read_per_token)
            step = latency.floor + np.maximum(latency.weight_read, latency.a * (chunk + decodes)) + read_seconds + attention
            seconds = np.where(active, seconds + step, seconds)
            done = done + chunk
            left = left - chunk

    def decode_step_seconds_array(self, decodes: Ints, decode_context: Ints) -> Floats:
        """``decode_step_seconds`` per row."""
        latency = self.latency
        step = (
            latency.floor + np.maximum(latency.weight_read, latency.a * decodes)
            + (decode_context + decodes) * latency.kv_read_per_token
        )
        return np.where(decodes > 0, step, 0.0)
