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

import math
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
            self.ttft.item(i), self.wait.item(i), self.prefill.item(i), self.kv_wait.item(i),
            self.cached_tokens.item(i), self.cold_prefill.item(i),
        )  # fmt: skip


_Row = tuple[
    EndpointLedger, int, EndpointMetrics | None, bool, DecodeLoad, tuple[int, ...], tuple[float, ...],
    EndpointLearner, LatencyEstimate,
]
"""(ledger, its version, scrape — its metrics, None while stale —, stale) the row was derived from; the
decode load; what the arithmetic reads of it, the ``_I_*`` and ``_F_*`` fields (ints, floats); the
learner and the estimate the coefficients came from. The candidates' rows are kept as two arrays with
one row per field and one column per candidate, so a field is a contiguous array."""
# Integer fields: sequences, context, capacity, foreign waiting, pending requests, and three whose
# minimum over the candidates (one reduction) tells a pick which terms it can skip: the chunk cap, the
# KV room (capacity − context; ``_NO_ROOM_LIMIT`` where nothing is resident, which never waits for KV)
# and −foreign waiting.
_I_SEQUENCES, _I_CONTEXT, _I_CAPACITY, _I_FOREIGN, _I_PENDING, _I_CHUNK, _I_ROOM, _I_NEG_FOREIGN = range(8)
_INTS = 8
_NO_ROOM_LIMIT = np.iinfo(np.int64).max
# Float fields. The ones compared with or subtracted from ``now`` are adjacent, so one numpy operation
# covers several (per-operation overhead, not the 64 elements, is what a pick pays): ``_F_HEAD`` (the
# oldest pending request's predicted first token, inf when none), ``_F_STRETCH`` (the same where the
# head is streamed — ``per_cold`` ≠ 0 — else inf: overdue there means stretched), ``_F_NEWEST`` (the
# newest's); ``_F_BUSY`` … ``_F_HEAD_START`` (``backlog_terms``' times). ``_F_NEG_PER_COLD`` is
# −``per_cold``: (head start − now) × −per_cold is (now − head start) × per_cold exactly.
(_F_MEAN_OUTPUT, _F_HALF_STEP, _F_DRAIN, _F_PER_STEP, _F_PER_TOKEN, _F_PER_PAIR, _F_BEHIND, _F_NEG_PER_COLD,
 _F_HEAD, _F_STRETCH, _F_NEWEST, _F_BUSY, _F_BUSY_COLD, _F_HEAD_COLD, _F_HEAD_START) = range(15)
_FLOATS = 15
_VERSION = operator.attrgetter("version")
_SCALAR_ROWS = 6
"""Matched endpoints up to which their cached-prefix prefill is computed in Python, row by row (about
a microsecond each), instead of a dozen numpy operations over all candidates."""


class BatchPredictor:
    """Keeps a row per endpoint (see ``_Row``) and, for the candidate list of the last pick, those rows
    as arrays (a column each) together with what each was derived from, as lists aligned with the candidates (ledger
    objects and versions, metrics objects, staleness, learner versions): the next pick with the same
    candidates compares those lists whole (C-speed; equal lists are the common case between scrapes)
    and walks only the ones that differ, so a pick rewrites only the rows that changed without a
    Python-level check per endpoint."""

    __slots__ = (
        "_aligned", "_floats", "_generation", "_ints", "_learned", "_learners", "_ledgers", "_names",
        "_pool_version", "_rows", "_scrapes", "_versions", "predictor",
    )  # fmt: skip

    def __init__(self, predictor: TTFTPredictor) -> None:
        self.predictor = predictor
        self._rows: dict[str, _Row] = {}
        self._names: list[str] = []
        self._aligned: list[_Row | None] = []
        self._ints = np.zeros((_INTS, 0), dtype=np.int64)
        self._floats = np.zeros((_FLOATS, 0), dtype=np.float64)
        self._ledgers: list[EndpointLedger] = []
        self._versions: list[int] = []
        self._scrapes: list[EndpointMetrics | None] = []
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
        n, ctx, foreign = load.sequences, load.context_tokens, load.foreign_waiting
        room = load.capacity_tokens - ctx if ctx > 0 else _NO_ROOM_LIMIT
        ints = (n, ctx, load.capacity_tokens, foreign, len(ledger.pending), max(MIN_CHUNK, p.budget - n), room, -foreign)
        learner = p.learner[name]
        scrape = None if state.stale else state.metrics
        return self._cost(name, (ledger, ledger.version, scrape, state.stale, load, ints, (), learner, learner.estimate))

    def _cost(self, name: str, row: _Row) -> _Row:
        """``row`` with the terms its endpoint's learned latency gives (its decode load kept): all a new
        estimate needs, so learning does not make a pick re-derive the endpoint's load."""
        ledger, load, learner, cost = row[0], row[4], row[7], row[8]
        n, ctx = load.sequences, load.context_tokens
        step = cost.decode_step_seconds(n, ctx)
        mean_output = ledger.mean_output_tokens(self.predictor.default_output_tokens)
        per_step = cost.per_step + cost.batch_seconds(n, ctx)
        busy_until, head_eta, busy_cold, head_cold_eta, head_start, per_cold, behind = ledger.backlog_terms()
        floats = (mean_output, step / 2, mean_output / 2 * step, per_step, cost.per_token, cost.per_pair, behind,
                  -per_cold, head_eta, head_eta if per_cold else math.inf, ledger.newest_eta(), busy_until, busy_cold,
                  head_cold_eta, head_start)
        fresh = (*row[:6], floats, learner, cost)
        self._rows[name] = fresh
        return fresh

    def _arrays(
        self, names: Sequence[str], states: Sequence[EndpointState], ledgers: Sequence[EndpointLedger],
        scrapes: list[EndpointMetrics | None] | None,
    ) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float64]]:
        """The candidates' rows as (ints, floats) arrays, the stale ones recomputed (see the class)."""
        learner = self.predictor.learner
        versions = list(map(_VERSION, ledgers))
        if scrapes is None:
            scrapes = [None if state.stale else state.metrics for state in states]
        ledgers = list(ledgers)
        if names != self._names or learner.generation != self._generation:
            self._names = list(names)
            self._generation = learner.generation
            self._aligned = [None] * len(names)
            self._ints = np.zeros((_INTS, len(names)), dtype=np.int64)
            self._floats = np.zeros((_FLOATS, len(names)), dtype=np.float64)
            self._learners = [learner[name] for name in names]
            self._learned = [-1] * len(names)
            self._pool_version = -1
            redo: set[int] = set(range(len(names)))
        else:
            redo = set()
            # the positions that differ, found without a Python-level step per endpoint
            if versions != self._versions:
                redo.update(compress(count(), map(operator.ne, versions, self._versions)))
            if scrapes is not self._scrapes and scrapes != self._scrapes:  # identical objects compare without __eq__
                redo.update(compress(count(), map(operator.is_not, scrapes, self._scrapes)))
            if ledgers != self._ledgers:  # ledgers compare by identity
                redo.update(compress(count(), map(operator.is_not, ledgers, self._ledgers)))
        self._versions, self._scrapes, self._ledgers = versions, scrapes, ledgers
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
            ints[:, i] = row[5]
            floats[:, i] = row[6]
        for i in recost:
            if i in redo:
                continue
            row = aligned[i] or rows[names[i]]
            estimate = learners[i].estimate
            if row[8] is not estimate:
                row = self._cost(names[i], (*row[:8], estimate))
                aligned[i] = row
                floats[:, i] = row[6]
        return ints, floats

    def load(self, state: EndpointState, ledger: EndpointLedger) -> DecodeLoad:
        """``TTFTPredictor.decode_load``: the cached row's while it was derived from this state and ledger
        version (as after a pick that predicted the endpoint), else computed."""
        row = self._rows.get(state.endpoint.name)
        if (row is not None and row[0] is ledger and row[1] == ledger.version
                and row[2] is (None if state.stale else state.metrics)):
            return row[4]
        return self.predictor.decode_load(state, ledger)

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
        scrapes: list[EndpointMetrics | None] | None = None,
    ) -> Predictions:
        """``TTFTPredictor.predict`` per (endpoint name, state, ledger, matched tokens), aligned;
        ``matched_tokens`` counts units of ``tokens_per_match`` tokens (1, or the prefix index's blocks);
        ``written_since`` holds, by position, the non-zero tokens written since a match was released;
        ``scrapes``, if the caller has it, each state's metrics (None where stale), aligned — the same list
        object as at the previous pick when none changed, which then costs no comparison.

        The same float operations as the scalar predictor, in as few numpy calls as they allow (each
        costs about a microsecond at 64 endpoints, whatever it computes): terms that are 0 or 1 for
        every candidate (one chunk per prompt, no foreign queue, nothing waiting for KV — known from one
        reduction over the cached rows) are skipped, which leaves the result unchanged, and the few
        matched endpoints' cached-prefix prefill is computed row by row."""
        ints, floats = self._arrays(names, states, ledgers, scrapes)
        prompt = max(1, prompt_tokens)
        block = self.predictor.block_size
        least_chunk, least_room, least_neg_foreign = np.minimum.reduce(ints[_I_CHUNK:], axis=1).tolist()
        one_chunk = prompt <= least_chunk  # then every prefill, cached or cold, is one iteration
        chunk_max = ints[_I_CHUNK]
        per_step, per_token, per_pair = floats[_F_PER_STEP], floats[_F_PER_TOKEN], floats[_F_PER_PAIR]
        # The cold prefill (nothing cached), then the matched endpoints' prefill over what they cache.
        cold = per_token * (prompt / 1000)
        cold += per_step if one_chunk else per_step * -(-prompt // chunk_max)  # one step: per_step × 1 is per_step
        cold += per_pair * (prompt * (prompt / 2) / 1e6)
        matched = list(compress(count(), matched_tokens))
        limit = (prompt - 1) // block * block  # the engine recomputes at least the prompt's last token, in whole blocks
        if not matched:
            cached_tokens = np.zeros(len(names), dtype=np.int64)
            prefill = cold
        elif len(matched) <= _SCALAR_ROWS:
            cached_tokens = np.zeros(len(names), dtype=np.int64)
            prefill = cold.copy()
            aligned, rows = self._aligned, self._rows
            for i in matched:
                cached = matched_tokens[i] * tokens_per_match
                since = written_since.get(i)
                row = aligned[i] or rows[names[i]]
                if since:
                    cached = surviving_tokens(cached, since, row[4])
                cached = max(0, min(cached, limit))
                new = prompt - cached
                steps = 1 if one_chunk else -(-new // row[5][_I_CHUNK])
                f = row[6]
                cached_tokens[i] = cached
                prefill[i] = f[_F_PER_STEP] * steps + f[_F_PER_TOKEN] * (new / 1000) + f[_F_PER_PAIR] * (
                    new * (cached + new / 2) / 1e6)
        else:
            cached_tokens = np.array(matched_tokens, dtype=np.int64)
            if tokens_per_match != 1:
                cached_tokens *= tokens_per_match
            for i, since in written_since.items():
                cached_tokens[i] = surviving_tokens(int(cached_tokens[i]), since, self._rows[names[i]][4])
            np.maximum(0, np.minimum(cached_tokens, limit, out=cached_tokens), out=cached_tokens)
            uncached = prompt - cached_tokens
            prefill = per_token * (uncached / 1000)
            prefill += per_step if one_chunk else per_step * -(-uncached // chunk_max)
            prefill += per_pair * (uncached * (cached_tokens + uncached / 2) / 1e6)
        # EndpointLedger.backlog, same operations; every term is finite where it is computed
        late, stretched = floats[_F_HEAD:_F_STRETCH + 1] < now  # overdue heads; overdue streamed heads
        since_now = floats[_F_BUSY:] - now  # busy until, busy cold, head cold eta, head start
        ahead = np.maximum(0.0, since_now[:3])
        backlog = np.where(late, ahead[1], ahead[0])
        if np.count_nonzero(stretched):
            slowness = since_now[3] * floats[_F_NEG_PER_COLD]
            np.minimum(MAX_SLOWNESS, np.maximum(1.0, slowness, out=slowness), out=slowness)
            slowness *= floats[_F_BEHIND]
            slowness += ahead[2]
            np.copyto(backlog, slowness, where=stretched)
        wait = backlog + floats[_F_HALF_STEP]
        if least_neg_foreign < 0:  # without foreign requests this adds 0.0 to a non-negative wait: exact
            wait += ints[_I_FOREIGN] * cold
        if prompt <= least_room:  # the common case: nothing waits for KV (adding 0.0 is exact)
            return Predictions(wait + prefill, wait, prefill, np.zeros(len(cached_tokens)), cached_tokens, cold)
        ctx = ints[_I_CONTEXT]
        overflow = ctx + prompt - ints[_I_CAPACITY]
        pressed = (overflow > 0) & (ctx > 0)
        drain = floats[_F_DRAIN]
        kv_wait = np.where(pressed, np.minimum(1.0, overflow / np.maximum(ctx, 1)) * drain, 0.0)
        return Predictions(wait + prefill + kv_wait, wait, prefill, kv_wait, cached_tokens, cold)

    def queued(self, ledgers: Sequence[EndpointLedger], now: float) -> int:
        """Σ ``EndpointLedger.queued(now)`` over the candidates of the ``predict`` just made (``ledgers``
        aligned with them): every pending request counts while the oldest one's first token is still
        ahead, none once the newest one's has passed; only a ledger with ``now`` in between is asked."""
        ahead = self._floats[_F_HEAD:_F_NEWEST + 1:_F_NEWEST - _F_HEAD] > now  # oldest's, newest's first token
        total = int(np.dot(self._ints[_I_PENDING], ahead[0]))
        between = ahead[1] > ahead[0]  # the newest's still ahead, the oldest's not
        if np.count_nonzero(between):
            for i in between.nonzero()[0].tolist():
                total += ledgers[i].queued(now)
        return total
