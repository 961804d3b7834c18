"""How long one engine iteration takes on the GPU, from the H100 calibration set.

The model (times in seconds)::

    step    = floor + linear + attention + lora_loads
    linear  = max(weight_bytes / bandwidth, a · N)                 N = tokens in the batch
    attention, per prefill chunk of n new tokens over c computed ones
            = max(b · n · (c + n/2), (c + n) · kv_bytes / bandwidth)
    attention, per decode (n = 1) = (c + 1) · kv_bytes / bandwidth

``linear`` is the weights' GEMMs: memory-bound (every weight is read once per iteration) until the
batch has enough tokens to be compute-bound (``a`` seconds per token). ``attention`` is compute-bound
for prefill chunks (``b`` per new-token × context-token pair, the causal half counted for the chunk
itself) and memory-bound for decodes (each decode reads its whole KV context once). A mixed step —
chunked prefill plus decodes, as vLLM schedules them — is the sum of these terms over its requests:
one weight pass shared by everyone, attention per request. ``floor`` is the fixed per-iteration cost
(CUDA-graph launch, sampler, scheduler); it defaults to 2 ms, a CUDA-graph-like value, not the 15–30 ms
the eager calibration runs show.

What is fitted, and to which points (``fit_prefill``): ``a`` and ``b`` by least squares on relative
error, without an intercept, over the compute-bound rows — cold prefills (``cached = 0``) taking at
least twice the model's eager launch floor (the smallest time measured for that model):
8B: new = 2,048 / 8,192 / 16,384; 1B: new = 8,192 / 16,384. The fit's largest error on those points
is 1.0 % (8B) and 0 % (1B: two points, two unknowns); with the default 2 ms floor added the model is
within 4 % of every fitted point, and ``tests/engine/test_latency.py`` asserts ≤ 15 %.
Rows with a cached prefix are inflated by eager attention's mask (the calibration README says to
treat them as upper bounds); the model stays below all of them. Decode rows are not fitted: they are
all either launch-bound (eager floor) or dominated by eager attention copying the KV cache (their KV
slope is ~0.31 TB/s, a tenth of HBM), so decodes use the physical model — weight bytes from the model
shape, 80 % of the H100's 3.35 TB/s — which predicts 8 ms for an 8B decode step at small batch, within
the 6–10 ms production engines reach with CUDA graphs.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

from epp.engine.calibration import Calibration

_MS = 1e-3


@dataclass(frozen=True, slots=True)
class PrefillFit:
    """Coefficients in seconds, and the worst relative error over the points they were fitted to."""

    linear_s_per_token: float
    attention_s_per_pair: float
    max_relative_error: float
    points: tuple[tuple[int, int, float], ...]


def compute_bound_prefill_rows(cal: Calibration) -> tuple[tuple[int, int, float], ...]:
    """Cold prefills whose time is at least twice the eager launch floor: the trustworthy rows."""
    eager_floor = min(ms for *_, ms in (*cal.prefill_ms, *cal.decode_ms))
    return tuple(row for row in cal.prefill_ms if row[0] == 0 and row[2] >= 2 * eager_floor)


def prefill_compute_seconds(a: float, b: float, cached: int, new: int) -> float:
    """The compute-bound prefill cost ``a·new + b·new·(cached + new/2)``."""
    return a * new + b * new * (cached + new / 2)


def fit_prefill(cal: Calibration) -> PrefillFit:
    """Least squares on relative error (rows weighted by 1/time), closed form for two unknowns."""
    rows = compute_bound_prefill_rows(cal)
    if len(rows) < 2:
        raise ValueError("need at least two compute-bound prefill rows to fit")
    # Minimise sum((a*x1 + b*x2 - 1)^2) with x1 = n/y, x2 = n*(c + n/2)/y.
    s11 = s12 = s22 = t1 = t2 = 0.0
    for cached, new, ms in rows:
        y = ms * _MS
        x1, x2 = new / y, new * (cached + new / 2) / y
        s11, s12, s22, t1, t2 = s11 + x1 * x1, s12 + x1 * x2, s22 + x2 * x2, t1 + x1, t2 + x2
    det = s11 * s22 - s12 * s12
    a = (t1 * s22 - t2 * s12) / det
    b = (s11 * t2 - s12 * t1) / det
    worst = max(abs(prefill_compute_seconds(a, b, c, n) - ms * _MS) / (ms * _MS) for c, n, ms in rows)
    return PrefillFit(a, b, worst, rows)


class LatencyModel:
    """Step durations for one engine. Pure arithmetic; ``jitter`` > 0 multiplies each step by a
    seeded uniform factor in [1 - jitter, 1 + jitter] (off by default: same inputs, same numbers)."""

    __slots__ = ("floor", "a", "b", "weight_read", "kv_read_per_token", "lora_load", "_jitter", "_rng")

    def __init__(
        self,
        fit: PrefillFit,
        *,
        weight_bytes: int,
        kv_bytes_per_token: int,
        bandwidth: float,
        floor: float,
        lora_load: float,
        jitter: float = 0.0,
        seed: int = 0,
    ) -> None:
        if floor < 0 or bandwidth <= 0 or not 0 <= jitter < 1:
            raise ValueError("floor must be >= 0, bandwidth > 0, 0 <= jitter < 1")
        self.floor = floor
        self.a = fit.linear_s_per_token
        self.b = fit.attention_s_per_pair
        self.weight_read = weight_bytes / bandwidth
        self.kv_read_per_token = kv_bytes_per_token / bandwidth
        self.lora_load = lora_load
        self._jitter = jitter
        self._rng = random.Random(seed)

    def prefill_attention(self, cached: int, new: int) -> float:
        """Attention cost of one prefill chunk: compute- or KV-read-bound, whichever is slower."""
        return max(self.b * new * (cached + new / 2), (cached + new) * self.kv_read_per_token)

    def step(self, num_tokens: int, decode_context: int, prefill_attention: float, lora_loads: int = 0) -> float:
        """One iteration: ``num_tokens`` scheduled in total, ``decode_context`` = sum over decodes of
        (context + 1) tokens read, ``prefill_attention`` = sum of ``prefill_attention`` over chunks."""
        seconds = (
            self.floor
            + max(self.weight_read, self.a * num_tokens)
            + decode_context * self.kv_read_per_token
            + prefill_attention
            + lora_loads * self.lora_load
        )
        if self._jitter:
            seconds *= 1.0 + self._rng.uniform(-self._jitter, self._jitter)
        return seconds

    def prefill(self, cached: int, new: int) -> float:
        """A lone prefill of ``new`` tokens over ``cached`` ones (what the calibration rows measure)."""
        return self.step(new, 0, self.prefill_attention(cached, new))

    def decode(self, batch: int, context: int) -> float:
        """A pure decode step of ``batch`` sequences of ``context`` tokens each."""
        return self.step(batch, batch * (context + 1), 0.0)


def relative_errors(model: LatencyModel, rows: Sequence[tuple[int, int, float]]) -> list[float]:
    """(predicted - measured) / measured for prefill rows ``(cached, new, ms)``."""
    return [(model.prefill(c, n) - ms * _MS) / (ms * _MS) for c, n, ms in rows]
