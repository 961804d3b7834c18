"""``TTFTPredictor.predict`` for every candidate of a pick at once, at a fraction of the cost.

A pick predicts every candidate endpoint. Done one endpoint at a time in Python that costs several
microseconds each (the decode load, the ledger reads, the chunk walk), so the default policy cost 4×
gie-default's CPU per pick at 64 endpoints. Here:

* what an endpoint's prediction reads that does not depend on the request or the time — its decode
  load (last scrape + ledger) and the time-free parts of its backlog — is cached per endpoint and
  recomputed only when its metrics object, staleness or ledger ``version`` changed: between scrapes a
  pick recomputes only the endpoints booked or answered since the previous pick;
  and when its learned latency (``EndpointLearner.estimate``) changed;
* the arithmetic over the candidates is one compiled loop (``_predict_rows``, numba: a pick paid ~1 µs
  per numpy call, ~20 of them, whatever the endpoint count), with the scalar predictor's float
  operations (``LatencyEstimate.prefill_seconds``) in the same order, so every element equals
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

from epp._util.jit import compiled
from epp.datastore import EndpointMetrics, EndpointState
from epp.scheduling.ttft.learn import MIN_CHUNK, EndpointLearner, LatencyEstimate
from epp.scheduling.ttft.ledger import MAX_SLOWNESS, EndpointLedger
from epp.scheduling.ttft.predictor import SURVIVAL_EDGE, DecodeLoad, Prediction, TTFTPredictor


Ints = npt.NDArray[np.int64]
Floats = npt.NDArray[np.float64]
Ints2 = npt.NDArray[np.int64]
"""Two-dimensional: a row per field, a column per candidate (C order, so a field is contiguous)."""
Floats2 = npt.NDArray[np.float64]


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
# Integer fields: sequences, context, capacity, foreign waiting, pending requests, the chunk cap.
_I_SEQUENCES, _I_CONTEXT, _I_CAPACITY, _I_FOREIGN, _I_PENDING, _I_CHUNK = range(6)
_INTS = 6
# Float fields: ``_F_HEAD`` (the oldest pending request's predicted first token, inf when none),
# ``_F_STRETCH`` (the same where the head is streamed — ``per_cold`` ≠ 0 — else inf: overdue there means
# stretched), ``_F_NEWEST`` (the newest's); ``_F_BUSY`` … ``_F_HEAD_START`` (``backlog_terms``' times).
# ``_F_NEG_PER_COLD`` is −``per_cold``: (head start − now) × −per_cold is (now − head start) × per_cold exactly.
(_F_MEAN_OUTPUT, _F_HALF_STEP, _F_DRAIN, _F_PER_STEP, _F_PER_TOKEN, _F_PER_PAIR, _F_BEHIND, _F_NEG_PER_COLD,
 _F_HEAD, _F_STRETCH, _F_NEWEST, _F_BUSY, _F_BUSY_COLD, _F_HEAD_COLD, _F_HEAD_START) = range(15)
_FLOATS = 15
# What ``_predict_rows`` writes, a row each.
_O_TTFT, _O_WAIT, _O_PREFILL, _O_KV_WAIT, _O_COLD = range(5)
_OUTPUTS = 5
_VERSION = operator.attrgetter("version")


class BatchPredictor:
    """Keeps a row per endpoint (see ``_Row``) and, for the candidate list of the last pick, those rows
    as arrays (a column each) together with what each was derived from, as lists aligned with the candidates (ledger
    objects and versions, metrics objects, staleness, learner versions): the next pick with the same
    candidates compares those lists whole (C-speed; equal lists are the common case between scrapes)
    and walks only the ones that differ, so a pick rewrites only the rows that changed without a
    Python-level check per endpoint."""

    __slots__ = (
        "_aligned", "_between", "_floats", "_generation", "_ints", "_kernels", "_learned", "_learners", "_ledgers",
        "_names", "_pool_version", "_rows", "_scrapes", "_versions", "predictor",
    )  # fmt: skip

    def __init__(self, predictor: TTFTPredictor) -> None:
        self.predictor = predictor
        self._rows: dict[str, _Row] = {}
        self._names: list[str] = []
        self._aligned: list[_Row | None] = []
        self._ints = np.zeros((_INTS, 0), dtype=np.int64)
        self._floats = np.zeros((_FLOATS, 0), dtype=np.float64)
        self._between = np.zeros(0, dtype=np.int64)
        self._kernels = _Kernels()
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
        ints = (n, ctx, load.capacity_tokens, foreign, len(ledger.pending), max(MIN_CHUNK, p.budget - n))
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
            self._between = np.zeros(len(names), dtype=np.int64)
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
        object as at the previous pick when none changed, which then costs no comparison. One call of the
        compiled ``_predict_rows`` over the cached rows."""
        ints, floats = self._arrays(names, states, ledgers, scrapes)
        n = len(names)
        prompt = max(1, prompt_tokens)
        block = self.predictor.block_size
        matched = np.fromiter(matched_tokens, np.int64, n)
        since = np.zeros(n, dtype=np.int64)
        for i, written in written_since.items():
            since[i] = written
        out = np.empty((_OUTPUTS, n), dtype=np.float64)
        cached_tokens = np.empty(n, dtype=np.int64)
        limit = (prompt - 1) // block * block  # the engine recomputes at least the prompt's last token, in whole blocks
        self._kernels.predict(ints, floats, matched, since, prompt, tokens_per_match, limit, now, out, cached_tokens)
        return Predictions(out[_O_TTFT], out[_O_WAIT], out[_O_PREFILL], out[_O_KV_WAIT], cached_tokens, out[_O_COLD])

    def queued(self, ledgers: Sequence[EndpointLedger], now: float) -> int:
        """Σ ``EndpointLedger.queued(now)`` over the candidates of the ``predict`` just made (``ledgers``
        aligned with them): every pending request counts while the oldest one's first token is still
        ahead, none once the newest one's has passed; only a ledger with ``now`` in between is asked."""
        between = self._between
        total, asked = self._kernels.queued(self._ints, self._floats, now, between)
        for i in between[:asked].tolist():
            total += ledgers[i].queued(now)
        return int(total)


def _predict_rows(
    ints: Ints2, floats: Floats2, matched: Ints, since: Ints, prompt: int, tokens_per_match: int, limit: int,
    now: float, out: Floats2, cached_tokens: Ints,
) -> None:
    """``TTFTPredictor.predict`` for every column of the cached rows (``ints``, ``floats``), compiled: the
    scalar predictor's float operations in the same order per endpoint (``surviving_tokens``,
    ``LatencyEstimate.prefill_seconds``, ``EndpointLedger.backlog``), so each result equals it bit for bit.
    ``matched``: the prefix index's hit in units of ``tokens_per_match``; ``since``: tokens written since it
    was released (0: held, or unknown); ``limit``: the most of the prompt an engine reuses. Writes the
    ``_O_*`` rows of ``out`` and the hit assumed, ``cached_tokens``. ``np.maximum(a, x)`` and
    ``np.minimum`` are spelled out as numpy defines them (``a`` unless ``x`` is beyond it; NaN propagates)."""
    for i in range(matched.shape[0]):
        cached = matched[i] * tokens_per_match
        written = since[i]
        if written:  # surviving_tokens
            free = max(1, ints[_I_CAPACITY, i] - ints[_I_CONTEXT, i])
            share = SURVIVAL_EDGE - written / free
            share = share if share > 0.0 else 0.0
            cached = int(cached * (share if share < 1.0 else 1.0))
        cached = max(0, min(cached, limit))
        chunk = ints[_I_CHUNK, i]
        per_step, per_token, per_pair = floats[_F_PER_STEP, i], floats[_F_PER_TOKEN, i], floats[_F_PER_PAIR, i]
        cold = per_token * (prompt / 1000)  # the prefill if nothing were cached
        cold += per_step * -(-prompt // chunk)
        cold += per_pair * (prompt * (prompt / 2) / 1e6)
        if cached:
            new = prompt - cached
            prefill = per_token * (new / 1000)
            prefill += per_step * -(-new // chunk)
            prefill += per_pair * (new * (cached + new / 2) / 1e6)
        else:
            prefill = cold
        # EndpointLedger.backlog: an overdue streamed head stretches what queues behind it, an overdue head
        # moves it out by the hit it missed; every term is finite where it is computed
        if floats[_F_STRETCH, i] < now:
            slowness = (floats[_F_HEAD_START, i] - now) * floats[_F_NEG_PER_COLD, i]
            slowness = 1.0 if 1.0 >= slowness else slowness
            slowness = MAX_SLOWNESS if MAX_SLOWNESS <= slowness else slowness
            slowness *= floats[_F_BEHIND, i]
            ahead = floats[_F_HEAD_COLD, i] - now
            backlog = slowness + (0.0 if 0.0 >= ahead else ahead)
        else:
            ahead = floats[_F_BUSY_COLD if floats[_F_HEAD, i] < now else _F_BUSY, i] - now
            backlog = 0.0 if 0.0 >= ahead else ahead
        wait = backlog + floats[_F_HALF_STEP, i]
        foreign = ints[_I_FOREIGN, i]
        if foreign:
            wait += foreign * cold
        ttft = wait + prefill
        kv_wait = 0.0
        ctx = ints[_I_CONTEXT, i]
        overflow = ctx + prompt - ints[_I_CAPACITY, i]
        if overflow > 0 and ctx > 0:
            pressed = overflow / ctx
            kv_wait = (1.0 if 1.0 <= pressed else pressed) * floats[_F_DRAIN, i]
            ttft += kv_wait
        out[_O_TTFT, i] = ttft
        out[_O_WAIT, i] = wait
        out[_O_PREFILL, i] = prefill
        out[_O_KV_WAIT, i] = kv_wait
        out[_O_COLD, i] = cold
        cached_tokens[i] = cached


def _queued_rows(ints: Ints2, floats: Floats2, now: float, between: Ints) -> tuple[int, int]:
    """``BatchPredictor.queued`` over the cached rows, compiled: the pending requests of the endpoints whose
    oldest first token is still ahead, and how many endpoints have ``now`` between their oldest's and their
    newest's (their positions written to ``between``: the caller asks their ledgers)."""
    total = 0
    asked = 0
    for i in range(between.shape[0]):
        if floats[_F_HEAD, i] > now:
            total += ints[_I_PENDING, i]
        elif floats[_F_NEWEST, i] > now:
            between[asked] = i
            asked += 1
    return total, asked


class _Kernels:
    """The compiled ``_predict_rows`` and ``_queued_rows`` (``epp._util.jit``: once per process)."""

    __slots__ = ("predict", "queued")

    def __init__(self) -> None:
        self.predict = compiled(
            _predict_rows,
            "void(int64[:, ::1], float64[:, ::1], int64[::1], int64[::1], int64, int64, int64, float64,"
            " float64[:, ::1], int64[::1])",
        )
        self.queued = compiled(_queued_rows, "UniTuple(int64, 2)(int64[:, ::1], float64[:, ::1], float64, int64[::1])")
