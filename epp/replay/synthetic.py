"""Synthetic workloads with a known sharing structure, deterministic by seed.

- ``shared-prefix``: ``groups`` long system prompts, each followed by ``prompts_per_group`` distinct
  user questions, shuffled and arriving as a Poisson process (the shape of SGLang's
  ``generated-shared-prefix`` and inference-perf's ``shared_prefix``). A cache-aware policy should
  send each group to the engine that already holds its system prompt.
- ``multi-turn``: chat conversations starting as a Poisson process; turn k's prompt is the system
  prompt (shared by everyone) plus all earlier user messages and answers plus the new message, and
  arrives an exponential think time after turn k-1 (open loop: it does not wait for the answer).
  The answer fed back is fresh content, as a real engine's sampled tokens would be, so a turn can
  hit on everything up to the previous turn's prompt.

Every field of the parameter classes is a CLI flag (``--sp-*`` / ``--mt-*``).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from typing import Any

from epp.replay.traces.model import SegmentPrompt, Trace, TraceRequest
from epp.replay.traces.tokens import TokenSpace


@dataclass(frozen=True, slots=True)
class SharedPrefixParams:
    groups: int = field(default=64, metadata={"help": "distinct system prompts"})
    prompts_per_group: int = field(default=16, metadata={"help": "user questions per system prompt"})
    system_len: int = field(default=2048, metadata={"help": "system prompt tokens"})
    question_len: int = field(default=128, metadata={"help": "question tokens"})
    output_len: int = field(default=256, metadata={"help": "tokens generated per request"})
    rate: float = field(default=8.0, metadata={"help": "mean arrivals per second (Poisson)"})


@dataclass(frozen=True, slots=True)
class MultiTurnParams:
    conversations: int = field(default=128, metadata={"help": "conversations"})
    turns: int = field(default=6, metadata={"help": "user turns per conversation"})
    system_len: int = field(default=1024, metadata={"help": "system prompt tokens, shared by all"})
    user_len: int = field(default=128, metadata={"help": "tokens per user message"})
    output_len: int = field(default=256, metadata={"help": "tokens generated per turn"})
    rate: float = field(default=1.0, metadata={"help": "new conversations per second (Poisson)"})
    think_time: float = field(default=8.0, metadata={"help": "mean seconds between turns (exponential)"})


def _check(params: SharedPrefixParams | MultiTurnParams) -> None:
    for f in fields(params):
        if getattr(params, f.name) <= 0:
            raise ValueError(f"synthetic parameter {f.name} must be positive")


def shared_prefix(params: SharedPrefixParams, seed: int) -> Trace:
    _check(params)
    rng = random.Random(seed)
    space = TokenSpace()
    systems = [space.take(params.system_len) for _ in range(params.groups)]
    order = [g for g in range(params.groups) for _ in range(params.prompts_per_group)]
    rng.shuffle(order)
    t = 0.0
    requests = []
    for g in order:
        prompt = SegmentPrompt((systems[g], space.take(params.question_len)))
        requests.append(TraceRequest(t, prompt, params.output_len, session=f"group-{g}"))
        t += rng.expovariate(params.rate)
    return Trace("synthetic-shared-prefix", "synthetic", requests)


def multi_turn(params: MultiTurnParams, seed: int) -> Trace:
    _check(params)
    rng = random.Random(seed)
    space = TokenSpace()
    system = space.take(params.system_len)
    requests = []
    start = 0.0
    for c in range(params.conversations):
        history: tuple[tuple[int, int], ...] = (system,)
        t = start
        for _ in range(params.turns):
            history += (space.take(params.user_len),)
            requests.append(TraceRequest(t, SegmentPrompt(history), params.output_len, session=f"conv-{c}"))
            history += (space.take(params.output_len),)
            t += rng.expovariate(1.0 / params.think_time)
        start += rng.expovariate(params.rate)
    requests.sort(key=lambda r: r.arrival)
    return Trace("synthetic-multi-turn", "synthetic", requests)


@dataclass(frozen=True, slots=True)
class Workload:
    """A named generator, its parameter class, and the prefix of its CLI flags."""

    flag_prefix: str
    params: type[SharedPrefixParams | MultiTurnParams]
    build: Callable[[Any, int], Trace]


WORKLOADS: dict[str, Workload] = {
    "shared-prefix": Workload("sp", SharedPrefixParams, shared_prefix),
    "multi-turn": Workload("mt", MultiTurnParams, multi_turn),
}
