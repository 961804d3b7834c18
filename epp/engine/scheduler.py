"""Continuous batching as vLLM v1 schedules it: one ``schedule()`` per engine iteration.

There are no prefill and decode phases: every request has ``num_computed_tokens`` chasing
``num_tokens``, and a step gives each request up to its gap under a shared token budget
(``max_num_batched_tokens``). Long prompts are therefore prefilled in chunks across steps, side by
side with other requests' decodes. Running requests go first (oldest first); if one cannot get KV
blocks, the newest running request is preempted (FCFS: its blocks are freed, it goes back to the
front of the waiting queue and later recomputes, usually hitting its own cached prefix) and the
allocation retried. Waiting requests are admitted in order while the budget, ``max_num_seqs``, the
LoRA slots (``max_loras`` distinct adapters per batch) and the KV cache allow, and only in steps
that preempted nobody.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from dataclasses import dataclass, field

from epp.engine.kv_cache_manager import KVCacheManager
from epp.engine.request import EngineRequest, RequestStatus


@dataclass(slots=True)
class SchedulerOutput:
    """What one iteration runs: ``(request, num_new_tokens, num_computed_before)`` per request."""

    scheduled: list[tuple[EngineRequest, int, int]] = field(default_factory=list)
    num_admitted: int = 0
    num_preempted: int = 0
    lora_loads: int = 0
    all_running_scheduled: bool = False

    @property
    def pure_decode(self) -> bool:
        """Every running request got exactly one token and nothing else happened: the next
        iterations look the same until a request finishes or an arrival (see ``EngineCore.step``)."""
        return (
            self.all_running_scheduled
            and not self.num_admitted
            and not self.num_preempted
            and all(n == 1 for _, n, _ in self.scheduled)
        )


class Scheduler:
    def __init__(
        self,
        kv: KVCacheManager,
        *,
        max_num_seqs: int,
        max_num_batched_tokens: int,
        max_loras: int,
    ) -> None:
        self.kv = kv
        self.max_num_seqs = max_num_seqs
        self.max_num_batched_tokens = max_num_batched_tokens
        self.max_loras = max_loras
        self.waiting: deque[EngineRequest] = deque()
        self.running: list[EngineRequest] = []
        self.loaded_loras: OrderedDict[str, None] = OrderedDict()
        """Adapters resident in GPU slots, least recently used first."""
        self.num_preemptions = 0

    def add_request(self, request: EngineRequest) -> None:
        self.waiting.append(request)

    def remove(self, request: EngineRequest) -> None:
        """Take a request out of whichever queue holds it and free its blocks."""
        if request.status == RequestStatus.RUNNING:
            self.running.remove(request)
        else:
            self.waiting.remove(request)
        self.kv.free(request)

    def _preempt(self) -> EngineRequest:
        victim = self.running.pop()
        self.kv.free(victim)
        victim.status = RequestStatus.PREEMPTED
        victim.num_computed_tokens = 0
        victim.num_preemptions += 1
        self.num_preemptions += 1
        self.waiting.appendleft(victim)
        return victim

    def schedule(self) -> SchedulerOutput:
        out = SchedulerOutput()
        scheduled = out.scheduled
        budget = self.max_num_batched_tokens
        kv = self.kv
        running = self.running
        i = 0
        while i < len(running) and budget > 0:
            request = running[i]
            computed = request.num_computed_tokens
            num_new = min(request.num_tokens - computed, budget)
            while kv.allocate_slots(request, num_new) is None:
                out.num_preempted += 1
                if self._preempt() is request:
                    break
            else:
                scheduled.append((request, num_new, computed))
                request.num_computed_tokens = computed + num_new
                budget -= num_new
                i += 1
                continue
            break
        out.all_running_scheduled = len(scheduled) == len(running)
        batch_loras = {r.lora for r, _, _ in scheduled if r.lora is not None}
        if not out.num_preempted and self.waiting:
            self._admit(out, budget, batch_loras)
        out.lora_loads = self._load_loras(batch_loras)
        return out

    def _admit(self, out: SchedulerOutput, budget: int, batch_loras: set[str]) -> None:
        kv = self.kv
        waiting = self.waiting
        skipped: list[EngineRequest] = []
        while waiting and budget > 0 and len(self.running) < self.max_num_seqs:
            request = waiting[0]
            lora = request.lora
            if lora is not None and lora not in batch_loras and len(batch_loras) >= self.max_loras:
                skipped.append(waiting.popleft())
                continue
            hits, num_hit = kv.get_computed_blocks(request)
            num_new = min(request.num_tokens - num_hit, budget)
            if kv.allocate_slots(request, num_new, hits) is None:
                break
            waiting.popleft()
            if request.num_cached_tokens < 0:
                request.num_cached_tokens = num_hit
                kv.record_prefix_query(request.num_tokens, num_hit)
            request.num_computed_tokens = num_hit + num_new
            request.status = RequestStatus.RUNNING
            self.running.append(request)
            out.scheduled.append((request, num_new, num_hit))
            out.num_admitted += 1
            budget -= num_new
            if lora is not None:
                batch_loras.add(lora)
        if skipped:
            waiting.extendleft(reversed(skipped))

    def _load_loras(self, batch_loras: set[str]) -> int:
        """Make the batch's adapters resident, evicting least recently used idle ones; returns how
        many had to be loaded (each costs ``lora_load_seconds``)."""
        loaded = self.loaded_loras
        loads = 0
        for lora in batch_loras:
            if lora in loaded:
                loaded.move_to_end(lora)
            else:
                loads += 1
                loaded[lora] = None
        while len(loaded) > self.max_loras:
            victim = next(name for name in loaded if name not in batch_loras)
            del loaded[victim]
        return loads
