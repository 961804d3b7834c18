"""Engine configuration: a hardware/model profile plus vLLM's scheduler and cache knobs."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from types import MappingProxyType

from epp.engine.calibration import H100, Calibration
from epp.engine.latency import LatencyModel, fit_prefill

H100_BANDWIDTH = 3.35e12
"""H100 SXM HBM3 peak bytes/s."""


@dataclass(frozen=True, slots=True)
class ModelProfile:
    """A model on a GPU: what the latency model and the KV-cache size are derived from."""

    name: str
    calibration: Calibration
    weight_bytes: int
    """bf16 parameters × 2: read once per iteration."""
    bandwidth: float
    """Effective HBM bytes/s (80 % of peak: what paged-attention kernels sustain)."""
    linear_scale: float = 1.0
    attention_scale: float = 1.0
    """Multipliers on the fitted per-token and per-token-pair prefill costs, for a profile derived from
    another model's measurements (1: the calibration's own model)."""

    @property
    def kv_bytes_per_token(self) -> int:
        return self.calibration.kv_bytes_per_token


_8B = H100["llama-3.1-8b"]
_70B_TP = 4
_70B_PARAMS, _8B_PARAMS = 70.55e9, 8.03e9
_TP_OVERHEAD = 1.15
"""Tensor-parallel all-reduces (two per layer) on top of each GPU's share of the work."""
_70B_WEIGHT_BYTES = int(2 * _70B_PARAMS / _70B_TP)
"""bf16 weights per GPU."""
LLAMA_70B_H100_TP4 = ModelProfile(
    "llama-3.1-70b-h100-tp4",
    replace(
        _8B,
        # 80 layers × 8 KV heads × 128 dims × (K, V) × 2 bytes, a quarter of the heads on each GPU
        kv_bytes_per_token=80 * 8 * 128 * 2 * 2 // _70B_TP,
        free_gpu_bytes_after_weights=_8B.free_gpu_bytes_after_weights + 16_060_000_000 - _70B_WEIGHT_BYTES,
    ),
    _70B_WEIGHT_BYTES,
    0.8 * H100_BANDWIDTH,
    # GEMM FLOPs per token scale with the parameters, shared by four GPUs
    linear_scale=_70B_PARAMS / _8B_PARAMS / _70B_TP * _TP_OVERHEAD,
    # attention per token pair scales with layers × hidden size (80 × 8192 vs 32 × 4096)
    attention_scale=(80 * 8192) / (32 * 4096) / _70B_TP * _TP_OVERHEAD,
)
"""A 70B-class engine no single H100 holds: Llama-3.1-70B shape, tensor-parallel over four H100s, its
costs derived from the 8B's H100 measurements (no 70B was measured): per GPU a quarter of the weights
and of the KV heads, the fitted prefill coefficients scaled by the work per GPU plus 15 % for the
all-reduces. Per token about 2.5× slower to prefill than the 8B (2.2× per decode step), so replay's
engines span faster (1B) and slower (70B) than the 8B."""


PROFILES: Mapping[str, ModelProfile] = MappingProxyType(
    {
        "llama-3.1-8b-h100": ModelProfile(
            "llama-3.1-8b-h100", H100["llama-3.1-8b"], 16_060_000_000, 0.8 * H100_BANDWIDTH
        ),
        "llama-3.2-1b-h100": ModelProfile(
            "llama-3.2-1b-h100", H100["llama-3.2-1b"], 2_471_000_000, 0.8 * H100_BANDWIDTH
        ),
        LLAMA_70B_H100_TP4.name: LLAMA_70B_H100_TP4,
    }
)
DEFAULT_PROFILE = "llama-3.1-8b-h100"


@dataclass(frozen=True, slots=True)
class EngineConfig:
    """Everything an ``EngineCore`` needs; defaults follow vLLM's.

    ``num_gpu_blocks`` defaults to ``free_gpu_bytes_after_weights × gpu_memory_utilization /
    kv_bytes_per_token / block_size``: the calibration measured the bytes left after loading the
    weights on a whole H100, and ``gpu_memory_utilization`` (vLLM's default 0.9) keeps the same 10 %
    headroom vLLM leaves for activations and CUDA graphs. 8B: 29,202 blocks (467k tokens); 1B: 139,435 (2.2M tokens).
    ``model`` seeds the block-hash chain (LoRA requests seed it with the adapter name instead), so two
    engines serving the same model compute the same hashes for the same tokens.
    """

    profile: str = DEFAULT_PROFILE
    model: str = "meta-llama/Llama-3.1-8B-Instruct"
    block_size: int = 16
    num_gpu_blocks: int | None = None
    gpu_memory_utilization: float = 0.9
    max_num_seqs: int = 256
    max_model_len: int = 131072
    max_num_batched_tokens: int = 8192
    enable_prefix_caching: bool = True
    enable_kv_events: bool = False
    max_loras: int = 1
    lora_adapters: tuple[str, ...] = ()
    lora_load_seconds: float = 0.02
    step_floor_seconds: float = 0.002
    latency_jitter: float = 0.0
    seed: int = 0

    def __post_init__(self) -> None:
        if self.profile not in PROFILES:
            raise ValueError(f"unknown profile {self.profile!r}; known: {', '.join(PROFILES)}")
        for name in ("block_size", "max_num_seqs", "max_model_len", "max_num_batched_tokens", "max_loras"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1")
        if self.num_gpu_blocks is not None and self.num_gpu_blocks < 2:
            raise ValueError("num_gpu_blocks must be >= 2 (block 0 is reserved)")
        if not 0 < self.gpu_memory_utilization <= 1:
            raise ValueError("gpu_memory_utilization must be in (0, 1]")

    @property
    def model_profile(self) -> ModelProfile:
        return PROFILES[self.profile]

    @property
    def total_gpu_blocks(self) -> int:
        """The configured block count, or the one derived from the profile."""
        if self.num_gpu_blocks is not None:
            return self.num_gpu_blocks
        profile = self.model_profile
        kv_bytes = int(profile.calibration.free_gpu_bytes_after_weights * self.gpu_memory_utilization)
        return kv_bytes // (profile.kv_bytes_per_token * self.block_size)

    def latency_model(self) -> LatencyModel:
        profile = self.model_profile
        fit = fit_prefill(profile.calibration)
        fit = replace(
            fit, linear_s_per_token=fit.linear_s_per_token * profile.linear_scale,
            attention_s_per_pair=fit.attention_s_per_pair * profile.attention_scale,
        )
        return LatencyModel(
            fit,
            weight_bytes=profile.weight_bytes,
            kv_bytes_per_token=profile.kv_bytes_per_token,
            bandwidth=profile.bandwidth,
            floor=self.step_floor_seconds,
            lora_load=self.lora_load_seconds,
            jitter=self.latency_jitter,
            seed=self.seed,
        )
