"""``EngineCore``: one simulated vLLM engine, driven step by step by whoever owns time.

The core never reads a clock and never sleeps. ``step(now)`` runs one scheduler iteration that starts
at ``now`` and says how long it takes; the caller advances its clock by that much before delivering
the outputs and calling ``step`` again. The HTTP simulator sleeps ``duration × time_scale`` on the
wall clock; replay keeps a heap of engines' next step-end times in virtual time. Requests added while
a step is in flight join the next step, exactly as in vLLM's busy loop.
"""

from __future__ import annotations

from dataclasses import dataclass

from epp._util.hashing import seed_hash
from epp.engine.block_pool import BlockPool, KVCacheEvent
from epp.engine.config import EngineConfig
from epp.engine.kv_cache_manager import KVCacheManager
from epp.engine.request import EngineRequest, RequestStatus
from epp.engine.scheduler import Scheduler, SchedulerOutput


@dataclass(slots=True)
class RequestOutput:
    """What one step did for one request. Times are in the caller's clock (seconds);
    ``first_token_time``/``finish_time`` equal the step's end when set by this step."""

    request_id: str
    new_token_ids: list[int]
    first_token: bool
    finished: bool
    num_prompt_tokens: int
    num_cached_tokens: int
    num_output_tokens: int
    arrival_time: float
    first_token_time: float | None
    finish_time: float | None


@dataclass(slots=True)
class StepOutput:
    """``duration`` seconds of GPU time starting at the ``now`` given to ``step``; ``num_iterations``
    > 1 only when ``step`` was given a horizon and fused consecutive pure-decode iterations."""

    duration: float
    outputs: list[RequestOutput]
    num_iterations: int = 1


@dataclass(frozen=True, slots=True)
class EngineStats:
    """A snapshot in vLLM's metric vocabulary; counters are cumulative since start."""

    num_running: int
    num_waiting: int
    kv_usage: float
    prefix_cache_queries: int
    prefix_cache_hits: int
    num_preemptions: int
    prompt_tokens_total: int
    generation_tokens_total: int
    num_requests_finished: int
    running_loras: frozenset[str]
    waiting_loras: frozenset[str]
    max_loras: int
    block_size: int
    num_gpu_blocks: int


class EngineCore:
    def __init__(self, config: EngineConfig | None = None) -> None:
        self.config = config = config or EngineConfig()
        self.block_size = config.block_size
        self.num_gpu_blocks = config.total_gpu_blocks
        self.pool = BlockPool(
            self.num_gpu_blocks, enable_caching=config.enable_prefix_caching, enable_events=config.enable_kv_events
        )
        self.kv = KVCacheManager(self.pool, config.block_size)
        self.scheduler = Scheduler(
            self.kv,
            max_num_seqs=config.max_num_seqs,
            max_num_batched_tokens=config.max_num_batched_tokens,
            max_loras=config.max_loras,
        )
        self.latency = config.latency_model()
        self.max_model_len = min(config.max_model_len, self.pool.num_usable_blocks * config.block_size)
        self._requests: dict[str, EngineRequest] = {}
        self._model_seed = seed_hash(config.model)
        self._prompt_tokens_total = 0
        self._generation_tokens_total = 0
        self._num_finished = 0

    # -- requests ----------------------------------------------------------------------------------

    def add_request(self, request: EngineRequest) -> None:
        """Queue a request. Raises ``ValueError`` for a duplicate id, an unknown LoRA, or a request
        longer than ``max_model_len`` (which is also capped by what the KV cache can hold)."""
        if request.request_id in self._requests:
            raise ValueError(f"duplicate request id {request.request_id!r}")
        if request.lora is not None and request.lora not in self.config.lora_adapters:
            raise ValueError(f"unknown LoRA adapter {request.lora!r}")
        if request.num_tokens + request.max_tokens > self.max_model_len:
            raise ValueError(
                f"prompt ({request.num_tokens} tokens) + max_tokens ({request.max_tokens}) exceeds "
                f"max_model_len {self.max_model_len}"
            )
        if request.lora is None and not request.cache_salt:
            seed = self._model_seed
        else:
            seed = seed_hash((request.lora or self.config.model) + (request.cache_salt or ""))
        request.init_hashes(self.block_size, seed)
        self._requests[request.request_id] = request
        self.scheduler.add_request(request)

    def abort(self, request_id: str) -> bool:
        """Drop a request wherever it is; False if it is unknown or already finished."""
        request = self._requests.pop(request_id, None)
        if request is None:
            return False
        self.scheduler.remove(request)
        request.status = RequestStatus.FINISHED_ABORTED
        return True

    def has_unfinished_requests(self) -> bool:
        return bool(self._requests)

    # -- stepping ----------------------------------------------------------------------------------

    def step(self, now: float, horizon: float | None = None) -> StepOutput:
        """Run one iteration starting at ``now``; an idle engine returns ``StepOutput(0.0, [])``.

        With ``horizon`` (the next time anything outside may touch this engine: an arrival, an
        abort), a pure-decode iteration is followed by as many identical-shape iterations as start
        strictly before ``horizon``, stopping after the first one in which a request finishes or when
        the KV cache would need to preempt. The result is exactly what calling ``step`` repeatedly
        would produce, with each request's tokens merged into one output; it saves replay ~10× steps.
        """
        sched = self.scheduler.schedule()
        if not sched.scheduled:
            return StepOutput(0.0, [])
        end = now + self._duration(sched)
        outputs, any_finished = self._update(sched, end)
        iterations = 1
        if horizon is not None and not any_finished and sched.pure_decode:
            iterations, end = self._fuse(outputs, end, horizon)
        return StepOutput(end - now, outputs, iterations)

    def _duration(self, sched: SchedulerOutput) -> float:
        latency = self.latency
        num_tokens = 0
        decode_context = 0
        prefill_attention = 0.0
        for _, num_new, computed in sched.scheduled:
            num_tokens += num_new
            if num_new == 1:
                decode_context += computed + 1
            else:
                prefill_attention += latency.prefill_attention(computed, num_new)
        return latency.step(num_tokens, decode_context, prefill_attention, sched.lora_loads)

    def _update(self, sched: SchedulerOutput, end: float) -> tuple[list[RequestOutput], bool]:
        """Sample one token for every request whose prompt (and previous outputs) are now computed."""
        block_size = self.block_size
        outputs: list[RequestOutput] = []
        any_finished = False
        for request, _, _ in sched.scheduled:
            if request.num_computed_tokens < request.num_tokens:
                continue  # a prefill chunk that did not reach the end of the prompt
            first = request.num_output_tokens == 0
            new = request.append_output(1, block_size)
            if first:
                request.first_token_time = end
                self._prompt_tokens_total += request.num_prompt_tokens
            finished = request.num_output_tokens >= request.max_tokens
            if finished:
                self._finish(request, end)
                any_finished = True
            outputs.append(self._output(request, new, first, finished))
        self._generation_tokens_total += len(outputs)
        return outputs, any_finished

    def _fuse(self, outputs: list[RequestOutput], start: float, horizon: float) -> tuple[int, float]:
        running = self.scheduler.running
        if any(r.num_computed_tokens != r.num_tokens - 1 for r in running):
            return 1, start
        block_size = self.block_size
        batch = len(running)
        limit = min(r.remaining_tokens for r in running)
        phase = [0] * block_size  # requests whose next token starts a block, by offset
        context = 0
        for r in running:
            phase[r.num_computed_tokens % block_size] += 1
            context += r.num_computed_tokens
        free = self.pool.num_free_blocks
        step = self.latency.step
        t = start
        extra = 0
        while extra < limit and t < horizon:
            need = phase[-extra % block_size]
            if need > free:
                break
            free -= need
            context += batch
            t += step(batch, context, 0.0)
            extra += 1
        if not extra:
            return 1, start
        # Allocate for everyone before anyone finishes: in single steps, frees come after the
        # last iteration's allocations, and the free-queue order decides future evictions.
        for request in running:
            request.append_output(extra, block_size)
            if self.kv.allocate_slots(request, extra) is None:  # pragma: no cover - checked above
                raise RuntimeError("fused decode ran out of KV blocks")
            request.num_computed_tokens += extra
        by_id = {o.request_id: o for o in outputs}
        for request in list(running):
            out = by_id[request.request_id]
            out.new_token_ids.extend(request.all_token_ids[-extra:])
            out.num_output_tokens = request.num_output_tokens
            if request.num_output_tokens >= request.max_tokens:
                self._finish(request, t)
                out.finished = True
                out.finish_time = t
        self._generation_tokens_total += extra * batch
        return 1 + extra, t

    def _finish(self, request: EngineRequest, end: float) -> None:
        request.status = RequestStatus.FINISHED_LENGTH
        request.finish_time = end
        self.scheduler.running.remove(request)
        self.kv.free(request)
        del self._requests[request.request_id]
        self._num_finished += 1

    @staticmethod
    def _output(request: EngineRequest, new: list[int], first: bool, finished: bool) -> RequestOutput:
        return RequestOutput(
            request.request_id,
            new,
            first,
            finished,
            request.num_prompt_tokens,
            request.num_cached_tokens,
            request.num_output_tokens,
            request.arrival_time,
            request.first_token_time,
            request.finish_time,
        )

    # -- observability -----------------------------------------------------------------------------

    def stats(self) -> EngineStats:
        scheduler = self.scheduler
        return EngineStats(
            num_running=len(scheduler.running),
            num_waiting=len(scheduler.waiting),
            kv_usage=self.pool.usage(),
            prefix_cache_queries=self.kv.prefix_cache_queries,
            prefix_cache_hits=self.kv.prefix_cache_hits,
            num_preemptions=scheduler.num_preemptions,
            prompt_tokens_total=self._prompt_tokens_total,
            generation_tokens_total=self._generation_tokens_total,
            num_requests_finished=self._num_finished,
            running_loras=frozenset(r.lora for r in scheduler.running if r.lora is not None),
            waiting_loras=frozenset(r.lora for r in scheduler.waiting if r.lora is not None),
            max_loras=self.config.max_loras,
            block_size=self.block_size,
            num_gpu_blocks=self.num_gpu_blocks,
        )

    def take_kv_events(self) -> list[KVCacheEvent]:
        """Drain the KV-cache events since the last call (empty unless ``enable_kv_events``)."""
        return self.pool.take_events()

    def reset_prefix_cache(self) -> bool:
        """Forget all cached prefixes (emits ``AllBlocksCleared``); False while requests hold blocks."""
        return self.pool.reset_prefix_cache()
