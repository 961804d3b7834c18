"""``TTFTPredictor.predict`` for every candidate of a pick at once, at a fraction of the cost.

A pick predicts every candidate endpoint. Done one endpoint at a time in Python that costs several
microseconds each (the decode load, the ledger reads, the chunk walk), so the default policy cost 4×
gie-default's CPU per pick at 64 endpoints. Here:

* what an endpoint's prediction reads that does not depend on the request or the time — its decode
  load (last scrape + ledger) and the time-free parts of its backlog — is cached per endpoint and
  recomputed only when its metrics object, staleness or ledger ``version`` changed: between scrapes a
  pick recomputes only the endpoints booked or answered since the previous pick;
  and when its learned latency (``EndpointLearner.estimate``) changed;
* the arithmetic runs as numpy over endpoints, with the scalar predictor's float operations
  (``LatencyEstimate.prefill_seconds``) in the same order, so every element equals
  ``TTFTPredictor.predict`` bit for bit (``tests/scheduling/ttft/test_batch.py`` compares them on
  random states).
"""

from __future__ import annotations

import operator
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from itertools import compress, count

import numpy as np
import numpy.typing as npt

from epp.datastore import EndpointMetrics, EndpointState
from epp.scheduling.ttft.learn import MIN_CHUNK, EndpointLearner, LatencyEstimate
from epp.scheduling.ttft.ledger import MAX_SLOWNESS, EndpointLedger
from epp.scheduling.ttft.predictor import DecodeLoad, Prediction, TTFTPredictor, surviving_tokens


Ints = npt.NDArray[np.int64]
Floats = npt.NDArray[np.float64]


@dataclass(frozen=True, slots=True)
class Predictions:
    """One pick's predictions, one element per endpoint (aligned with the endpoints asked about)."""

    ttft: Floats
    wait: Floats
    prefill: Floats
    kv_wait: Floats
    cached_tokens: Ints
    cold_prefill: Floats

    def __len__(self) -> int:
        return len(self.ttft)

    def __getitem__(self, i: int) -> Prediction:
        return Prediction(
            float(self.ttft[i]), float(self.wait[i]), float(self.prefill[i]), float(self.kv_wait[i]),
            int(self.cached_tokens[i]), float(self.cold_prefill[i]),
        )  # fmt: skip


_Row = tuple[
    EndpointLedger, int, EndpointMetrics | None, bool, DecodeLoad, tuple[int, ...], tuple[float, ...],
    EndpointLearner, LatencyEstimate,
]
"""(ledger, its version, metrics, stale) the row was derived from; the decode load; what the arithmetic
reads of it: (sequences, context, capacity, foreign waiting, chunk cap, pending requests) and (mean
output tokens, ``EndpointLedger.backlog_terms``' first 3, half a decode step, the KV drain time,
``EndpointLedger.newest_eta``, seconds per prefill iteration next to the decodes, per 1K tokens, per
1M token pairs, ``backlog_terms``' last 4); the learner and the estimate the coefficients came from."""
_INTS = 6
_VERSION = operator.attrgetter("version")
_METRICS = operator.attrgetter("metrics")
_STALE = operator.attrgetter("stale")
_FLOATS = 14  # lengths of the two tuples


class BatchPredictor:
    """Keeps a row per endpoint (see ``_Row``) and, for the candidate list of the last pick, those rows
    as arrays together with what each was derived from, as lists aligned with the candidates (ledger
    objects and versions, metrics objects, staleness, learner versions): the next pick with the same
    candidates compares those lists whole (C-speed; equal lists are the common case between scrapes)
    and walks only the ones that differ, so a pick rewrites only the rows that changed without a
    Python-level check per endpoint."""

    __slots__ = (
        "_aligned", "_floats", "_generation", "_ints", "_learned", "_learners", "_ledgers", "_metrics", "_names",
        "_pool_version", "_rows", "_stale", "_versions", "predictor",
    )  # fmt: skip

    def __init__(self, predictor: TTFTPredictor) -> None:
        self.predictor = predictor
        self._rows: dict[str, _Row] = {}
        self._names: list[str] = []
        self._aligned: list[_Row | None] = []
        self._ints = np.zeros((0, _INTS), dtype=np.int64)
        self._floats = np.zeros((0, _FLOATS), dtype=np.float64)
        self._ledgers: list[EndpointLedger] = []
        self._versions: list[int] = []
        self._metrics: list[EndpointMetrics | None] = []
        self._stale: list[bool] = []
        self._learners: list[EndpointLearner] = []
        self._learned: list[int] = []
        self._pool_version = -1
        self._generation = -1

    def forget(self, name: str) -> None:
        """The endpoint is gone: drop its cached row (and the aligned candidate list)."""
        self._rows.pop(name, None)
        self._names = []

    def _row(self, name: str, state: EndpointState, ledger: EndpointLedger) -> _Row:
        """Everything about the endpoint that does not depend on the request or the time, computed with
        the scalar predictor's own code."""
        p = self.predictor
        load = p.decode_load(state, ledger)
        n = load.sequences
        ints = (n, load.context_tokens, load.capacity_tokens, load.foreign_waiting, max(MIN_CHUNK, p.budget - n),
                len(ledger.pending))
        learner = p.learner[name]
        return self._cost(name, (ledger, ledger.version, state.metrics, state.stale, load, ints, (), learner, learner.estimate))

    def _cost(self, name: str, row: _Row) -> _Row:
        """``row`` with the terms its endpoint's learned latency gives (its decode load kept): all a new
        estimate needs, so learning does not make a pick re-derive the endpoint's load."""
        ledger, load, learner = row[0], row[4], row[7]
        cost = learner.estimate
        n, ctx = load.sequences, load.context_tokens
        step = cost.decode_step_seconds(n, ctx)
        mean_output = ledger.mean_output_tokens(self.predictor.default_output_tokens)
        per_step = cost.per_step + cost.batch_seconds(n, ctx)
        busy_until, head_eta, busy_cold, head_cold_eta, head_start, per_cold, behind = ledger.backlog_terms()
        floats = (mean_output, busy_until, head_eta, busy_cold, step / 2, mean_output / 2 * step, ledger.newest_eta(),
                  per_step, cost.per_token, cost.per_pair, head_cold_eta, head_start, per_cold, behind)
        fresh = (*row[:6], floats, learner, cost)
        self._rows[name] = fresh
        return fresh

    def _arrays(
        self, names: Sequence[str], states: Sequence[EndpointState], ledgers: Sequence[EndpointLedger]
    ) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float64]]:
        """The candidates' rows as (ints, floats) arrays, the stale ones recomputed (see the class)."""
        learner = self.predictor.learner
        versions = list(map(_VERSION, ledgers))
        metrics = list(map(_METRICS, states))
        stale = list(map(_STALE, states))
        ledgers = list(ledgers)
        if names != self._names or learner.generation != self._generation:
            self._names = list(names)
            self._generation = learner.generation
            self._aligned = [None] * len(names)
            self._ints = np.zeros((len(names), _INTS), dtype=np.int64)
            self._floats = np.zeros((len(names), _FLOATS), dtype=np.float64)
            self._learners = [learner[name] for name in names]
            self._learned = [-1] * len(names)
            self._pool_version = -1
            redo: set[int] = set(range(len(names)))
        else:
            redo = set()
            # the positions that differ, found without a Python-level step per endpoint
            if versions != self._versions:
                redo.update(compress(count(), map(operator.ne, versions, self._versions)))
            if metrics != self._metrics:  # identical objects compare without __eq__
                redo.update(compress(count(), map(operator.is_not, metrics, self._metrics)))
            if stale != self._stale:
                redo.update(compress(count(), map(operator.ne, stale, self._stale)))
            if ledgers != self._ledgers:  # ledgers compare by identity
                redo.update(compress(count(), map(operator.is_not, ledgers, self._ledgers)))
        self._versions, self._metrics, self._stale, self._ledgers = versions, metrics, stale, ledgers
        # a learned estimate can change when its endpoint learned, or (for every endpoint) when the pool did
        learners = self._learners
        learned = list(map(_VERSION, learners))
        pool_version = learner.pool.version
        if pool_version != self._pool_version:
            recost: Sequence[int] = range(len(names))
        elif learned != self._learned:
            recost = list(compress(count(), map(operator.ne, learned, self._learned)))
        else:
            recost = []
        self._learned, self._pool_version = learned, pool_version
        rows, aligned, ints, floats = self._rows, self._aligned, self._ints, self._floats
        for i in redo:
            row = self._row(names[i], states[i], ledgers[i])
            aligned[i] = row
            ints[i] = row[5]
            floats[i] = row[6]
        for i in recost:
            if i in redo:
                continue
            row = aligned[i] or rows[names[i]]
            if row[8] is not learners[i].estimate:
                row = self._cost(names[i], row)
                aligned[i] = row
                floats[i] = row[6]
        return ints, floats

    def predict(
        self,
        names: Sequence[str],
        states: Sequence[EndpointState],
        ledgers: Sequence[EndpointLedger],
        prompt_tokens: int,
        matched_tokens: Sequence[int],
        written_since: Mapping[int, int],
        now: float,
        tokens_per_match: int = 1,
    ) -> Predictions:
        """``TTFTPredictor.predict`` per (endpoint name, state, ledger, matched tokens), aligned;
        ``matched_tokens`` counts units of ``tokens_per_match`` tokens (1, or the prefix index's blocks);
        ``written_since`` holds, by position, the non-zero tokens written since a match was released."""
        ints, floats = self._arrays(names, states, ledgers)
        n, ctx, capacity, foreign, chunk_max, _ = ints.T
        (mean_output, busy_until, head_eta, busy_cold, half_step, drain, _, per_step, per_token, per_pair, head_cold_eta,
         head_start, per_cold, behind) = floats.T
        prompt = max(1, prompt_tokens)
        block = self.predictor.block_size
        # Row 0: the prefill over the cached tokens; row 1: the cold prefill (equal where nothing is
        # cached); one chunk walk for both, the per-endpoint terms broadcast over them.
        done = np.zeros((2, len(matched_tokens)), dtype=np.int64)
        cached_tokens = done[0]
        cached_tokens[:] = matched_tokens
        if tokens_per_match != 1:
            cached_tokens *= tokens_per_match
        for i, since in written_since.items():
            cached_tokens[i] = surviving_tokens(int(cached_tokens[i]), since, self._rows[names[i]][4])
        # The engine recomputes at least the prompt's last token, in whole blocks.
        np.maximum(0, np.minimum(cached_tokens, (prompt - 1) // block * block, out=cached_tokens), out=cached_tokens)
        new = prompt - done  # at least 1: at most prompt − 1 tokens are cached
        steps = -(-new // chunk_max)
        prefill, cold = per_step * steps + per_token * (new / 1000) + per_pair * (new * (done + new / 2) / 1e6)
        # EndpointLedger.backlog, same operations; every term is finite where it is computed
        late = head_eta < now
        backlog = np.maximum(0.0, np.where(late, busy_cold, busy_until) - now)
        stretched = late & (per_cold != 0.0)
        if np.count_nonzero(stretched):
            slowness = np.minimum(MAX_SLOWNESS, np.maximum(1.0, (now - head_start) * per_cold))
            backlog = np.where(stretched, behind * slowness + np.maximum(0.0, head_cold_eta - now), backlog)
        wait = backlog + half_step
        wait = wait + foreign * cold  # without foreign requests this adds 0.0 to a non-negative wait: exact
        overflow = ctx + prompt - capacity
        pressed = (overflow > 0) & (ctx > 0)
        if not np.count_nonzero(pressed):  # the common case: nothing waits for KV (adding 0.0 is exact)
            return Predictions(wait + prefill, wait, prefill, np.zeros(len(cached_tokens)), cached_tokens, cold)
        kv_wait = np.where(pressed, np.minimum(1.0, overflow / np.maximum(ctx, 1)) * drain, 0.0)
        return Predictions(wait + prefill + kv_wait, wait, prefill, kv_wait, cached_tokens, cold)

    def queued(self, ledgers: Sequence[EndpointLedger], now: float) -> int:
        """Σ ``EndpointLedger.queued(now)`` over the candidates of the ``predict`` just made (``ledgers``
        aligned with them): every pending request counts while the oldest one's first token is still
        ahead, none once the newest one's has passed; only a ledger with ``now`` in between is asked."""
        pending, oldest, newest = self._ints[:, 5], self._floats[:, 2], self._floats[:, 6]
        total = int(pending[oldest > now].sum())
        for i in np.flatnonzero((oldest <= now) & (newest > now)).tolist():
            total += ledgers[i].queued(now)
        return total
