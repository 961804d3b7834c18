"""The TTFT scorer's compiled score arithmetic (``_scores``) equals, bit for bit, the numpy form it replaced
(kept here verbatim as the reference), on random predictions: every ``workCharge``, λ 0 and not, ties,
zero and negative-zero costs, all endpoints equally warm, none warm, one endpoint, relative ties
(``tieRelative``) or none."""

from __future__ import annotations

import math
import random

import numpy as np
import numpy.typing as npt
import pytest

from epp.scheduling.plugins.scorers.ttft_predictor import (
    BASE_CAP,
    CHARGE_CAPPED,
    CHARGE_MISS,
    CHARGE_PREFILL,
    MIN_SECONDS,
    WORK_CHARGES,
    TTFTPredictorParams,
    TTFTPredictorScorer,
)
from epp.scheduling.prefix.producer import ApproxPrefixCacheProducer
from epp._util.clock import VirtualClock
from epp.scheduling.ttft import Predictions

Floats = npt.NDArray[np.float64]
TRANSPARENT = 2.0**-70
"""A tolerance the rounding keeps every bit through (cost ÷ it is exact and already whole): with it a
difference of one ulp in any term shows in the scores."""


def _stranded(p: Predictions) -> tuple[Floats, float, int] | None:
    cached = p.cached_tokens
    held = np.count_nonzero(cached)
    if not held:
        return None
    most = int(cached.max())
    if held == len(cached) and most == int(cached.min()):
        return None
    cold, prefill = p.cold_prefill, p.prefill
    share, ref = math.inf, 0
    for i in (cached == most).nonzero()[0].tolist():
        warm_cold = float(cold[i])
        warm_share = (warm_cold - float(prefill[i])) / max(warm_cold, MIN_SECONDS)
        if warm_share < share:
            share, ref = warm_share, i
    stranded: Floats = np.maximum(cold, cold[ref])
    stranded *= share
    stranded *= most - cached
    stranded /= most
    return stranded, share, most


def _work(p: Predictions, charge: str) -> Floats | None:
    prefill = p.prefill
    found = _stranded(p)
    if found is None:
        if charge == CHARGE_MISS:
            return None
        work = prefill.copy()
        if charge == CHARGE_CAPPED:
            np.minimum(work, BASE_CAP * float(work.min()), out=work)
        return work
    work, share, most = found
    if charge == CHARGE_PREFILL:
        work += prefill
        return work
    cached, cold = p.cached_tokens, p.cold_prefill
    added = cold * (share - 1.0)
    added += prefill
    np.maximum(added, 0.0, out=added)
    added[cached == most] = 0.0
    work += added
    if charge == CHARGE_CAPPED:
        base = prefill - added
        np.minimum(base, BASE_CAP * float(base.min()), out=base)
        work += base
    return work


def _reference(p: Predictions, w: float, relative: float, tol: float, charge: str) -> list[float]:
    """``TTFTPredictorScorer.score``'s arithmetic before it was compiled (with the relative tie as numpy
    wrote it on branch learnbal)."""
    rounded = _work(p, charge)
    if rounded is None:
        rounded = p.ttft.copy()
    else:
        rounded *= w
        rounded += p.ttft
    if relative:
        cheapest = rounded.min()
        np.copyto(rounded, cheapest, where=rounded <= cheapest * (1 + relative))
    rounded /= tol
    np.ceil(rounded, out=rounded)
    rounded *= tol
    if np.count_nonzero(rounded) < len(rounded):
        rounded[rounded == 0.0] = tol
    return list((rounded.min() / rounded).tolist())


def _predictions(rng: random.Random, n: int) -> Predictions:
    cold = np.array([rng.choice([0.0, rng.uniform(0, 2), 0.5, rng.uniform(0, 1e-11)]) for _ in range(n)])
    cached = np.zeros(n, dtype=np.int64)
    prefill = cold.copy()
    warm = rng.sample(range(n), min(n, rng.choice([0, 1, 2, rng.randrange(0, n + 1), n])))
    same = rng.random() < 0.3
    for i in sorted(warm):
        cached[i] = 1024 if same else rng.choice([16, 512, 1024, rng.randrange(1, 5000)])
        prefill[i] = cold[i] * rng.choice([rng.uniform(0, 1), 1.0, 0.0])
    if rng.random() < 0.2:  # an unequal pool: a cold endpoint slower or faster than the warm ones
        cold *= np.array([rng.choice([1.0, 0.2, 5.4]) for _ in range(n)])
    wait = np.array([rng.choice([0.0, -0.0, rng.uniform(0, 3)]) for _ in range(n)])
    if rng.random() < 0.2:  # zero costs: rounded to one tolerance
        prefill[:] = 0.0
        wait[:] = rng.choice([0.0, -0.0])
    ttft = wait + prefill
    return Predictions(ttft, wait, prefill, np.zeros(n), cached, cold)


@pytest.mark.parametrize("charge", WORK_CHARGES)
@pytest.mark.parametrize("seed", range(8))
def test_scores_equal_the_numpy_reference_bit_for_bit(charge: str, seed: int) -> None:
    rng = random.Random(seed)
    for _ in range(150):
        n = rng.choice([1, 2, 8, 64, rng.randrange(1, 300)])
        p = _predictions(rng, n)
        w = rng.choice([0.0, 2.0, rng.uniform(0, 10)])
        tol = rng.choice([0.002, 1e-3, 0.05, TRANSPARENT])
        scorer = TTFTPredictorScorer(ApproxPrefixCacheProducer("p"), VirtualClock(),
                                     params=TTFTPredictorParams(work_charge=charge))
        scores = np.empty(n, dtype=np.float64)
        relative = rng.choice([0.0, 0.05, rng.uniform(0, 0.2)])
        scorer._scores(p.ttft, p.prefill, p.cold_prefill, p.cached_tokens, w, relative, tol, scorer._charge, scores)
        expected = _reference(p, w, relative, tol, charge)
        assert [x.hex() for x in scores.tolist()] == [x.hex() for x in expected]
