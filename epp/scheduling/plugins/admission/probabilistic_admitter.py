"""``probabilistic-admitter`` (llm-d ``requestcontrol/admitter/probabilisticadmitter``): shed sheddable
traffic gradually as the pool fills, instead of the saturation detector's all-or-nothing gate.

Requests with priority ≥ 0 are always admitted, and so is every request when there are no candidates.
A sheddable request (priority < 0) is rejected with probability p = min(sat^``power`` · ``k``, 1), where
sat = mean over candidates of max(waiting / ``queueDepthThreshold``, kv usage / ``kvCacheUtilThreshold``)
and an endpoint without fresh metrics counts 1.0 (upstream counts a pod with no metrics as full; epp
extends that to stale ones, as its utilization detector does). Defaults 5, 0.8, 5, 300: no shedding
below sat ≈ 0.08, all of it from sat ≈ 0.34.

``admit`` is the whole decision — a pure function of the candidates and one random draw — so the
director (429) and flow control call the same thing.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from epp.datastore import EndpointState
from epp.request import LLMRequest
from epp.plugin.typed_name import TypedName
from epp.plugin.params import ParamError, decode_params
from epp.plugin.registry import PluginHandle

PROBABILISTIC_ADMITTER = "probabilistic-admitter"


@dataclass(frozen=True, slots=True)
class AdmitterParams:
    queue_depth_threshold: int = 5
    kv_cache_util_threshold: float = 0.8
    power: float = 5.0
    k: float = 300.0

    def __post_init__(self) -> None:
        for key, value in (("queueDepthThreshold", self.queue_depth_threshold), ("kvCacheUtilThreshold", self.kv_cache_util_threshold),
                           ("power", self.power), ("k", self.k)):
            if value <= 0:
                raise ParamError(key, "must be > 0")


def pool_saturation(endpoints: Sequence[EndpointState], queue_depth: float, kv_util: float) -> float:
    total = 0.0
    for e in endpoints:
        m = e.metrics
        total += 1.0 if e.stale or m is None else max(m.waiting / queue_depth, m.kv_usage / kv_util)
    return total / len(endpoints)


def rejection_probability(saturation: float, power: float, k: float) -> float:
    scaled: float = saturation ** power * k  # float ** float is typed Any (a negative base gives complex)
    return min(scaled, 1.0)


class ProbabilisticAdmitter:
    def __init__(self, name: str = PROBABILISTIC_ADMITTER, params: AdmitterParams | None = None,
                 rng: random.Random | None = None) -> None:
        self.typed_name = TypedName(PROBABILISTIC_ADMITTER, name)
        self.params = params or AdmitterParams()
        self.rng = rng or random.Random()

    def admit(self, request: LLMRequest, endpoints: Sequence[EndpointState]) -> str | None:
        """None to admit, else why the request is rejected."""
        if request.priority >= 0 or not endpoints:
            return None
        p = self.params
        sat = pool_saturation(endpoints, p.queue_depth_threshold, p.kv_cache_util_threshold)
        prob = rejection_probability(sat, p.power, p.k)
        if self.rng.random() < prob:
            return f"probabilistic-admitter: rejected, saturation={sat:.3f} prob={prob:.2f}"
        return None


def factory(name: str, params: Mapping[str, Any], handle: PluginHandle) -> ProbabilisticAdmitter:
    return ProbabilisticAdmitter(name, decode_params(AdmitterParams, params), handle.child_rng())
