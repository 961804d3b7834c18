"""Predicted time to first token of one request on one endpoint.

    ttft = wait + prefill + kv_wait

* ``prefill`` — this prompt's uncached tokens (``prompt − cached``) chunked through the engine's token
  budget next to the decodes it will find there, timed by what this endpoint's requests taught
  (``LatencyLearner``: per endpoint, no GPU or model assumed). ``cached`` is the prefix index's match times the chance it is still in the
  engine's cache: 1 while a request holding it is in flight; once released, LRU eviction reaches it
  as the tokens written since (``PrefixRecency``) approach the KV space running sequences leave free.
  With r = written / free, the expected share still cached is ``clip(1.5 − r, 0, 1)``, between what
  replay measured on the two Mooncake traces at ×2.8 load (share the engine really held; conversation:
  r < 0.75 → 0.96–1.0, ≈ 0.9 → 0.66, 1.0–1.4 → 0.5, 1.5–1.7 → 0.29; synthetic: < 0.5 → 0.99,
  0.5–0.75 → 0.77, 0.75–1.0 → 0.49, ≥ 1.0 → ≤ 0.07) rather than 0/1 at r = 1, because free space and
  tokens written are both estimates.
* ``wait`` — work ahead of it: this epp's own prefill backlog on the endpoint (``EndpointLedger``,
  instant; with shared state plus the other replicas' as they last reported it), plus requests in the engine's waiting queue that this epp did not send (scrape; each
  costed like this prompt cold), plus half an iteration for the one in progress.
* ``kv_wait`` — an engine whose KV cache cannot hold the prompt next to what it runs admits it only
  as running sequences finish: the overflow's share of the resident context times the time those
  sequences need to drain (their mean remaining output × one decode iteration).

Decode load (how many sequences decode during the prefill, and the KV context they hold and read) is
what the last scrape saw (``running + waiting``, ``kv_usage``) plus what this epp routed since. An
endpoint whose metrics are stale or missing is predicted from epp's own bookkeeping only (its requests
in flight there): its old numbers neither attract nor repel traffic.
"""

from __future__ import annotations

from dataclasses import dataclass

from epp.datastore import EndpointState
from epp.scheduling.ttft.learn import LatencyLearner
from epp.scheduling.ttft.ledger import EndpointLedger

SURVIVAL_EDGE = 1.5
"""Written-since / free-KV ratio at which a released prefix is taken to be fully evicted (the expected
share cached falls linearly to it from 1 at ``SURVIVAL_EDGE − 1``)."""


@dataclass(frozen=True, slots=True)
class Prediction:
    """Seconds, and the cache hit the prediction assumed."""

    ttft: float
    wait: float
    prefill: float
    kv_wait: float
    cached_tokens: int
    cold_prefill: float
    """The prefill if nothing were cached: what the ledger assumes when the prediction overruns."""


@dataclass(frozen=True, slots=True)
class DecodeLoad:
    """Sequences decoding alongside the prefill, the KV tokens they hold, and the KV capacity."""

    sequences: int
    context_tokens: int
    capacity_tokens: int
    foreign_waiting: int


def surviving_tokens(matched_tokens: int, written_since: int | None, load: DecodeLoad) -> int:
    """The expected share of a matched prefix still cached, in tokens: all of it while held or when
    nothing was written since (``written_since`` 0 or None), else ``clip(1.5 − written / free, 0, 1)``."""
    if not written_since:
        return matched_tokens
    free = max(1, load.capacity_tokens - load.context_tokens)
    return int(matched_tokens * min(1.0, max(0.0, SURVIVAL_EDGE - written_since / free)))


class TTFTPredictor:
    """``learner``: each endpoint's latency; ``budget``: the engines' token budget per iteration (vLLM's
    ``max_num_batched_tokens``); ``kv_capacity_tokens``: assumed when an engine does not report its
    KV cache size."""

    def __init__(
        self, learner: LatencyLearner, block_size: int, default_output_tokens: int, kv_capacity_tokens: int
    ) -> None:
        self.learner = learner
        self.block_size = block_size
        self.default_output_tokens = default_output_tokens
        self.kv_capacity_tokens = kv_capacity_tokens

    @property
    def budget(self) -> int:
        return self.learner.budget

    def decode_load(self, state: EndpointState, ledger: EndpointLedger) -> DecodeLoad:
        m = None if state.stale else state.metrics
        remote = ledger.remote  # the other replicas' requests (shared state): not foreign, not unknown
        if m is None:
            return DecodeLoad(len(ledger) + remote.requests, ledger.context_tokens + remote.context_tokens,
                              self.kv_capacity_tokens, 0)
        capacity = m.num_gpu_blocks * m.block_size if m.num_gpu_blocks and m.block_size else self.kv_capacity_tokens
        unseen, unseen_tokens = ledger.routed_after(m.scraped_at)
        sequences = m.running + m.waiting + unseen
        context = int(m.kv_usage * capacity) + unseen_tokens
        foreign = max(0, m.waiting - ledger.unstarted_at(m.scraped_at) - remote.pending)
        return DecodeLoad(sequences, context, capacity, foreign)

    def predict(
        self,
        state: EndpointState,
        ledger: EndpointLedger,
        prompt_tokens: int,
        matched_tokens: int,
        written_since: int | None,
        now: float,
    ) -> Prediction:
        """``matched_tokens``: the prefix index's hit; ``written_since``: tokens the endpoint was sent
        to write since that prefix was last sent there (None: unknown, trust the index)."""
        prompt = max(1, prompt_tokens)
        load = self.decode_load(state, ledger)
        cost = self.learner.estimate(state.endpoint.name)
        n, ctx = load.sequences, load.context_tokens
        cached = surviving_tokens(matched_tokens, written_since, load)
        # The engine recomputes at least the prompt's last token, in whole blocks.
        cached = max(0, min(cached, (prompt - 1) // self.block_size * self.block_size))
        budget = self.budget
        prefill = cost.prefill_seconds(prompt - cached, cached, n, ctx, budget)
        cold = cost.prefill_seconds(prompt, 0, n, ctx, budget) if cached else prefill
        step = cost.decode_step_seconds(n, ctx)
        wait = ledger.backlog(now) + step / 2
        if load.foreign_waiting:
            wait += load.foreign_waiting * cold
        kv_wait = 0.0
        overflow = ctx + prompt - load.capacity_tokens
        if overflow > 0 and ctx > 0:
            drain = ledger.mean_output_tokens(self.default_output_tokens) / 2 * step
            kv_wait = min(1.0, overflow / ctx) * drain
        return Prediction(wait + prefill + kv_wait, wait, prefill, kv_wait, cached, cold)
