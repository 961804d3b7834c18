"""Flow-control policies as llm-d names them in ``plugins:``: ordering within a flow, fairness between
the flows of a band, and the usage limit that gates each band against pool saturation.

Semantics follow llm-d-router's ``pkg/epp/framework/plugins/flowcontrol``:

* ordering — ``fcfs-ordering-policy`` (enqueue order), ``edf-ordering-policy`` (earliest deadline =
  enqueue time + the request's TTL; requests without a TTL last, then FCFS),
  ``slo-deadline-ordering-policy`` (deadline = arrival + ``x-llm-d-slo-ttft-ms``; requests without a
  valid header last, then FCFS);
* fairness — ``global-strict-fairness-policy`` (the band's single best head item across flows, flow
  boundaries ignored: the default), ``round-robin-fairness-policy`` (flows in turn, so no flow starves
  another), ``program-aware-fairness`` (least attained service: each flow — a program, by fairness id —
  is charged input + 2 × output tokens of its completed requests, decayed with a half-life; the flow
  scoring best on ``lasWeightService`` × (1 − normalised service) + ``lasWeightHeadWait`` ×
  normalised head-of-queue wait goes next);
* usage limits — the static policy (ceiling 1.0 for every band: dispatch while saturation < 1) and
  ``soft-reflective-ceiling-policy`` (band i of N, highest first, has ceiling 1 − i·s/(N − 1); a band
  at or past its ceiling opens once every round(s / (1 − s)) dispatch cycles; the top band is never
  gated below saturation 1).

All are pure: they read the queues the controller hands them and keep only bounded per-band or
per-flow state. Time comes from the controller (its injected clock).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from epp.plugin.typed_name import TypedName
from epp.plugin.params import ParamError, decode_params

SLO_TTFT_HEADERS = ("x-llm-d-slo-ttft-ms", "x-slo-ttft-ms")

FCFS = "fcfs-ordering-policy"
EDF = "edf-ordering-policy"
SLO_DEADLINE = "slo-deadline-ordering-policy"
GLOBAL_STRICT = "global-strict-fairness-policy"
ROUND_ROBIN = "round-robin-fairness-policy"
PROGRAM_AWARE = "program-aware-fairness"
STATIC_USAGE_LIMIT = "static-usage-limit-policy"
SOFT_REFLECTIVE_CEILING = "soft-reflective-ceiling-policy"


class Item(Protocol):
    """What policies read of one queued request."""

    seq: int
    enqueued_at: float
    received_at: float
    ttl: float
    headers: Mapping[str, str]


class Queue(Protocol):
    """One flow's queue, as fairness policies see it."""

    flow_id: str

    def head(self) -> Item | None: ...

    def __len__(self) -> int: ...


QueueT = TypeVar("QueueT", bound=Queue)  # pick returns one of the caller's own queues, with its own type


# -- ordering ------------------------------------------------------------------------------------

OrderingKey = Callable[[Item], tuple[float, ...]]


@dataclass(frozen=True, slots=True)
class OrderingPolicy:
    typed_name: TypedName
    key: OrderingKey
    """Smaller is served first; every key ends with the enqueue sequence number (FCFS tie-break)."""


def _fcfs(item: Item) -> tuple[float, ...]:
    return (item.seq,)


def _edf(item: Item) -> tuple[float, ...]:
    return (item.enqueued_at + item.ttl if item.ttl > 0 else math.inf, item.seq)


def slo_ttft_seconds(headers: Mapping[str, str]) -> float | None:
    for name in SLO_TTFT_HEADERS:
        raw = headers.get(name)
        if raw is not None:
            try:
                value = int(raw.strip())
            except ValueError:
                return None
            return value / 1000.0 if value >= 0 else None
    return None


def _slo_deadline(item: Item) -> tuple[float, ...]:
    slo = slo_ttft_seconds(item.headers)
    return (item.received_at + slo if slo is not None else math.inf, item.received_at, item.seq)


_ORDERING: dict[str, OrderingKey] = {FCFS: _fcfs, EDF: _edf, SLO_DEADLINE: _slo_deadline}


# -- fairness ------------------------------------------------------------------------------------


class FairnessPolicy(Protocol):
    typed_name: TypedName

    def pick(self, queues: Sequence[QueueT], ordering: OrderingPolicy, now: float, state: dict[str, Any]) -> QueueT | None:
        """The non-empty queue to serve next; ``queues`` are the band's flows in the order they appeared,
        ``state`` this band's own scratch space (one policy may serve several bands)."""
        ...

    def completed(self, flow_id: str, prompt_tokens: int, completion_tokens: int, now: float) -> None:
        """A request of ``flow_id`` finished with this usage (only program-aware fairness cares)."""
        ...

    def forget(self, flow_id: str) -> None:
        """The flow has no queued request left; drop per-flow state it does not need to keep."""
        ...


class GlobalStrict:
    """The best head item by the band's ordering, whichever flow holds it."""

    def __init__(self, name: str) -> None:
        self.typed_name = TypedName(GLOBAL_STRICT, name)

    def pick(self, queues: Sequence[QueueT], ordering: OrderingPolicy, now: float, state: dict[str, Any]) -> QueueT | None:
        best: QueueT | None = None
        best_key: tuple[float, ...] = ()
        for queue in queues:
            head = queue.head()
            if head is None:
                continue
            key = ordering.key(head)
            if best is None or key < best_key:
                best, best_key = queue, key
        return best

    def completed(self, flow_id: str, prompt_tokens: int, completion_tokens: int, now: float) -> None:
        pass

    def forget(self, flow_id: str) -> None:
        pass


class RoundRobin:
    """Flows in turn: after serving a flow, the next non-empty flow after it (in the order flows
    appeared; a flow that emptied and came back joins at the end). The cursor is per band."""

    def __init__(self, name: str) -> None:
        self.typed_name = TypedName(ROUND_ROBIN, name)

    def pick(self, queues: Sequence[QueueT], ordering: OrderingPolicy, now: float, state: dict[str, Any]) -> QueueT | None:
        if not queues:
            return None
        start = 0
        last = state.get("last")
        if last is not None:
            for i, queue in enumerate(queues):
                if queue.flow_id == last:
                    start = i + 1
                    break
        n = len(queues)
        for k in range(n):
            queue = queues[(start + k) % n]
            if len(queue):
                state["last"] = queue.flow_id
                return queue
        return None

    def completed(self, flow_id: str, prompt_tokens: int, completion_tokens: int, now: float) -> None:
        pass

    def forget(self, flow_id: str) -> None:
        pass


@dataclass(frozen=True, slots=True)
class ProgramAwareParams:
    strategy: str = "las"
    las_weight_service: float = 0.8
    las_weight_head_wait: float = 0.2
    las_decay_factor: float = 0.99997
    las_half_life_seconds: float = 60.0
    eviction_ttl_seconds: float = 3600.0
    eviction_sweep_seconds: float = 300.0

    def __post_init__(self) -> None:
        if self.strategy != "las":
            raise ParamError("strategy", f"only 'las' is supported, got {self.strategy!r}")
        if not 0.0 < self.las_decay_factor <= 1.0:
            raise ParamError("lasDecayFactor", "must be in (0, 1]")
        if self.las_half_life_seconds < 0:
            raise ParamError("lasHalfLifeSeconds", "must not be negative")
        if self.eviction_sweep_seconds <= 0:
            raise ParamError("evictionSweepSeconds", "must be positive")
        if self.eviction_ttl_seconds <= 0:
            raise ParamError("evictionTtlSeconds", "must be positive")


@dataclass(slots=True)
class _Service:
    tokens: float = 0.0
    anchor: float = 0.0  # when ``tokens`` was last decayed or charged
    last_seen: float = 0.0


_INPUT_WEIGHT, _OUTPUT_WEIGHT = 1, 2  # output tokens cost ~2 × input tokens (llm-d's LAS weights)


class ProgramAware:
    """Least attained service between programs (flows by fairness id). Per-program state is evicted
    once a program has been idle for ``evictionTtlSeconds`` (swept every ``evictionSweepSeconds``), so a
    client churning fairness ids cannot grow it without bound beyond one TTL's worth."""

    def __init__(self, name: str, params: ProgramAwareParams) -> None:
        self.typed_name = TypedName(PROGRAM_AWARE, name)
        self.params = params
        self._service: dict[str, _Service] = {}
        self._next_sweep = 0.0

    def _decayed(self, flow_id: str, now: float) -> _Service:
        state = self._service.get(flow_id)
        if state is None:
            state = self._service[flow_id] = _Service(anchor=now, last_seen=now)
        elapsed = now - state.anchor
        if elapsed > 0:
            p = self.params
            factor = 0.5 ** (elapsed / p.las_half_life_seconds) if p.las_half_life_seconds > 0 else p.las_decay_factor ** elapsed
            state.tokens *= factor
            state.anchor = now
        return state

    def pick(self, queues: Sequence[QueueT], ordering: OrderingPolicy, now: float, state: dict[str, Any]) -> QueueT | None:
        self._sweep(now)
        live = [(q, h) for q in queues if (h := q.head()) is not None]
        if not live:
            return None
        services = [self._decayed(q.flow_id, now).tokens for q, _ in live]
        waits = [now - h.enqueued_at for _, h in live]
        p = self.params
        best, best_score = None, -math.inf
        for (queue, _), service, wait in zip(live, services, waits):
            score = p.las_weight_service * (1.0 - _normalise(service, services)) + p.las_weight_head_wait * _normalise(wait, waits)
            if score > best_score:
                best, best_score = queue, score
        return best

    def completed(self, flow_id: str, prompt_tokens: int, completion_tokens: int, now: float) -> None:
        state = self._decayed(flow_id, now)
        state.tokens += _INPUT_WEIGHT * prompt_tokens + _OUTPUT_WEIGHT * completion_tokens
        state.last_seen = now

    def forget(self, flow_id: str) -> None:
        pass  # attained service must outlive an empty queue; the sweep evicts idle programs

    def _sweep(self, now: float) -> None:
        if now < self._next_sweep:
            return
        self._next_sweep = now + self.params.eviction_sweep_seconds
        ttl = self.params.eviction_ttl_seconds
        for flow_id in [f for f, s in self._service.items() if now - s.last_seen > ttl]:
            del self._service[flow_id]


def _normalise(value: float, values: Sequence[float]) -> float:
    lo, hi = min(values), max(values)
    return (value - lo) / (hi - lo) if hi > lo else 0.0


# -- usage limits --------------------------------------------------------------------------------


class UsageLimitPolicy(Protocol):
    typed_name: TypedName

    def ceilings(self, saturation: float, bands: int) -> list[float]:
        """One ceiling per band, highest priority first: a band dispatches while saturation < its ceiling."""
        ...


class StaticUsageLimit:
    """The framework's default: every band may dispatch until the pool is saturated."""

    def __init__(self, name: str = STATIC_USAGE_LIMIT) -> None:
        self.typed_name = TypedName(STATIC_USAGE_LIMIT, name)

    def ceilings(self, saturation: float, bands: int) -> list[float]:
        return [1.0] * bands


class SoftReflectiveCeiling:
    """Lower bands are gated first as saturation rises, then opened once every ``period`` cycles."""

    def __init__(self, name: str) -> None:
        self.typed_name = TypedName(SOFT_REFLECTIVE_CEILING, name)
        self._ticks: list[int] = []

    def ceilings(self, saturation: float, bands: int) -> list[float]:
        if bands <= 1:
            return [1.0] * bands
        while len(self._ticks) < bands:
            self._ticks.append(0)
        out = [1.0]
        for i in range(1, bands):
            reflective = 1.0 - i * saturation / (bands - 1)
            if saturation < reflective:
                out.append(1.0)
            elif saturation >= 1.0:
                out.append(0.0)
            else:
                period = max(1, round(saturation / (1.0 - saturation + 1e-9)))
                self._ticks[i] += 1
                out.append(1.0 if self._ticks[i] % period == 0 else 0.0)
        return out


# -- registry ------------------------------------------------------------------------------------

FlowPolicy = OrderingPolicy | GlobalStrict | RoundRobin | ProgramAware | SoftReflectiveCeiling


def _no_params(kind: str, params: Mapping[str, Any]) -> None:
    if params:
        raise ParamError(next(iter(params)), f"{kind} takes no parameters")


def _ordering(kind: str) -> Callable[[str, Mapping[str, Any]], FlowPolicy]:
    def build(name: str, params: Mapping[str, Any]) -> FlowPolicy:
        _no_params(kind, params)
        return OrderingPolicy(TypedName(kind, name), _ORDERING[kind])
    return build


def _simple(kind: str, cls: Callable[[str], FlowPolicy]) -> Callable[[str, Mapping[str, Any]], FlowPolicy]:
    def build(name: str, params: Mapping[str, Any]) -> FlowPolicy:
        _no_params(kind, params)
        return cls(name)
    return build


FACTORIES: dict[str, Callable[[str, Mapping[str, Any]], FlowPolicy]] = {
    FCFS: _ordering(FCFS),
    EDF: _ordering(EDF),
    SLO_DEADLINE: _ordering(SLO_DEADLINE),
    GLOBAL_STRICT: _simple(GLOBAL_STRICT, GlobalStrict),
    ROUND_ROBIN: _simple(ROUND_ROBIN, RoundRobin),
    PROGRAM_AWARE: lambda name, params: ProgramAware(name, decode_params(ProgramAwareParams, params)),
    SOFT_REFLECTIVE_CEILING: _simple(SOFT_REFLECTIVE_CEILING, SoftReflectiveCeiling),
}
"""Plugin type → factory(name, parameters); every flow-control plugin type a config may declare."""
