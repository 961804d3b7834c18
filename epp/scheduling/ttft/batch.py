"""``TTFTPredictor.predict`` for every candidate of a pick at once, at a fraction of the cost.

A pick predicts every candidate endpoint. Done one endpoint at a time in Python that costs several
microseconds each (the decode load, the ledger reads, the chunk walk), so the default policy cost 4×
gie-default's CPU per pick at 64 endpoints. Here:

* what an endpoint's prediction reads that does not depend on the request or the time — its decode
  load (last scrape + ledger) and the time-free parts of its backlog — is cached per endpoint and
  recomputed only when its metrics object, staleness or ledger ``version`` changed: between scrapes a
  pick recomputes one endpoint (the one the previous pick booked);
* the arithmetic runs as numpy over endpoints (``PrefillCost.*_array``), with the scalar predictor's
  float operations in the same order, so every element equals ``TTFTPredictor.predict`` bit for bit
  (``tests/scheduling/ttft/test_batch.py`` compares them on random states).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from epp.datastore import EndpointMetrics, EndpointState
from epp.scheduling.ttft.cost import Floats, Ints
from epp.scheduling.ttft.ledger import EndpointLedger
from epp.scheduling.ttft.predictor import DecodeLoad, Prediction, TTFTPredictor, surviving_tokens


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


_Row = tuple[EndpointLedger, int, EndpointMetrics | None, bool, DecodeLoad, tuple[int, int, int, int],
             tuple[float, float, float, float]]
"""(ledger, its version, metrics, stale) the row was derived from; the decode load; its numbers (sequences,
context, capacity, foreign waiting); (mean output tokens, ``EndpointLedger.backlog_terms``)."""


class BatchPredictor:
    __slots__ = ("_rows", "predictor")

    def __init__(self, predictor: TTFTPredictor) -> None:
        self.predictor = predictor
        self._rows: dict[str, _Row] = {}

    def forget(self, name: str) -> None:
        """The endpoint is gone: drop its cached row."""
        self._rows.pop(name, None)

    def _row(self, state: EndpointState, ledger: EndpointLedger) -> _Row:
        p = self.predictor
        load = p.decode_load(state, ledger)
        row = (
            ledger, ledger.version, state.metrics, state.stale, load,
            (load.sequences, load.context_tokens, load.capacity_tokens, load.foreign_waiting),
            (ledger.mean_output_tokens(p.default_output_tokens), *ledger.backlog_terms()),
        )  # fmt: skip
        self._rows[state.name] = row
        return row

    def predict(
        self,
        states: Sequence[EndpointState],
        ledgers: Sequence[EndpointLedger],
        prompt_tokens: int,
        matched_tokens: Sequence[int],
        written_since: Mapping[int, int],
        now: float,
    ) -> Predictions:
        """``TTFTPredictor.predict`` per (state, ledger, matched tokens), aligned; ``written_since`` holds
        the (non-zero) tokens written since the match was released, by position, where known."""
        rows = self._rows
        ints = []
        floats = []
        for state, ledger in zip(states, ledgers):
            row = rows.get(state.name)
            if (
                row is None or row[0] is not ledger or row[1] != ledger.version
                or row[2] is not state.metrics or row[3] != state.stale
            ):  # fmt: skip
                row = self._row(state, ledger)
            ints.append(row[5])
            floats.append(row[6])
        cached = list(matched_tokens)
        for i, since in written_since.items():
            cached[i] = surviving_tokens(cached[i], since, rows[states[i].name][4])
        n, ctx, capacity, foreign = np.array(ints, dtype=np.int64).reshape(-1, 4).T
        mean_output, busy_until, head_eta, overrun = np.array(floats, dtype=np.float64).reshape(-1, 4).T
        return self._arithmetic(max(1, prompt_tokens), n, ctx, capacity, foreign, np.array(cached, dtype=np.int64),
                                mean_output, busy_until, head_eta, overrun, now)

    def _arithmetic(
        self, prompt: int, n: Ints, ctx: Ints, capacity: Ints, foreign: Ints, cached: Ints,
        mean_output: Floats, busy_until: Floats, head_eta: Floats, overrun: Floats, now: float,
    ) -> Predictions:
        """``TTFTPredictor.predict`` after the decode load and the eviction discount, per element."""
        cost = self.predictor.cost
        block = self.predictor.block_size
        cached = np.maximum(0, np.minimum(cached, (prompt - 1) // block * block))
        rows = len(n)
        # One chunk walk for the prefill and the cold prefill (same as the prefill where nothing is cached).
        both = cost.prefill_seconds_array(
            np.concatenate((prompt - cached, np.full(rows, prompt, dtype=np.int64))),
            np.concatenate((cached, np.zeros(rows, dtype=np.int64))),
            np.concatenate((n, n)), np.concatenate((ctx, ctx)),
        )  # fmt: skip
        prefill, cold = both[:rows], both[rows:]
        step = cost.decode_step_seconds_array(n, ctx)
        backlog = busy_until - now
        backlog = np.maximum(0.0, np.where(head_eta < now, backlog + overrun, backlog))
        wait = backlog + step / 2
        wait = np.where(foreign > 0, wait + foreign * cold, wait)
        overflow = ctx + prompt - capacity
        pressed = (overflow > 0) & (ctx > 0)
        drain = mean_output / 2 * step
        kv_wait = np.where(pressed, np.minimum(1.0, overflow / np.maximum(ctx, 1)) * drain, 0.0)
        return Predictions(wait + prefill + kv_wait, wait, prefill, kv_wait, cached, cold)
