"""Each endpoint's latency, learned online from what its requests show: no GPU, model or profile known.

Two linear models per endpoint, each fitted by recursive least squares (RLS) with exponential
forgetting (``RecursiveLeastSquares``):

* **prefill** — seconds to compute ``new`` uncached prompt tokens on top of ``cached`` ones, on features
  ``[steps, new / 1e3, new · (cached + new/2) / 1e6]``: a cost per engine iteration (``steps`` = chunks
  of at most the token budget; launch, sampler, one pass over the weights), a cost per token (the
  weights' GEMMs) and a cost per (new × context) token pair (attention; summed over the chunks this is
  exactly ``new · (cached + new/2)``, whatever the chunking);
* **decode step** — seconds of one iteration while ``n`` sequences holding ``ctx`` KV tokens decode, on
  ``[1, n / 100, ctx / 1e5]``: the batch effect. Every prefill iteration carries those decodes too, so
  a prefill next to them costs ``steps × (n and ctx terms)`` more.

What it observes (``EndpointLearner``), all on the request path epp already runs (ext_proc stream or
replay, same hooks):

* **first tokens** — the engine admits first-come first-served, so when a request's first token arrives
  at ``t``, it and every request routed to the endpoint before it have prefilled, and their prefill ran
  from ``max(previous first token, first routed)`` to ``t``: one observation of their summed features
  (steps counted over their summed tokens: requests that share iterations share their cost). A first
  token that arrives within ``MERGE_GAP`` of the previous one from a request already waiting then was
  prefilled in the same iteration: it joins that observation instead of being read as free. The time
  the decodes spend in those iterations (current decode model × steps) is taken out first.
* **ends** — a streamed request's mean inter-token time, ``(end − first token − prefill extra) /
  (completion − 1)``, observes the decode step at the mean load seen at its first token and at its end.
  The prefill extra is what the prefills this endpoint timed inside that window added to the iterations
  beyond the decode step each of them also was (chunked prefill: every prefill iteration carries the
  running decodes): their observed seconds less ``steps × decode_fixed``, an interval partly inside
  counted in proportion (``_prefill_extra``, O(log n) on the last ≤ 2,048 intervals); with active-active
  replicas the intervals the others timed here too (``foreign_prefill``, heard with their observations,
  inserted in order). A stream that ends while requests are queued here (a prefill may be running)
  waits for that prefill's interval to be timed; with active-active replicas also for the others'
  intervals that may overlap it (``peers_heard``): each replica learns what is final before it exports
  (``flush``), so its export taken at ``t`` says every interval of its that ended before ``t − MERGE_GAP``
  has been sent, and a stream is learned once every peer's latest export is past its end — one or two
  exchange rounds (25–50 ms) later, as stale as shared state is, no constant of its own; one that
  ended while their requests were queued here (one of their prefills may be running) first waits for
  a later first token here, theirs or its own (first come, first served: the prefill running at its end
  is over by then, and any later one starts after its end). Learned before, each replica's decode step
  kept the peers' prefills it had not heard of yet (3 replicas on the 4 + 4 mix, 500 requests: 13 % of
  streams; inter-token time ×1.12 of what all the intervals give on average, ×4.6 at p99). A single
  replica (no peers) learns a stream when it did. Cost: O(1) per stream, and per exchange round and per
  first token O(streams held) per endpoint (those that ended within the last round or two, or during a
  peer's prefill). Read raw, the inter-token time of a loaded engine is mostly the prefills of the
  requests queued behind it: on the 4 + 4 mix at its knee every decode step was learned 2.5–7× too long, and
  since each prefill observation has ``steps ×`` the decodes' batch terms taken out, that also made the
  prefills look cheaper than they are (bench/RESULTS.md, "Decode steps learned without co-batched
  prefills").

An observation is applied as soon as its interval is closed — when any later event on the endpoint
comes more than ``MERGE_GAP`` after its first token, or with shared state the next exchange round
(``flush``) — not when its requests complete: a prefill's
timing is known at its first token, and waiting for streams to end (seconds to minutes of decode)
left a cold or changed endpoint mispredicted for that long (on a burst, the whole run: 1B synthetic
at ×14.7, TTFT p90 0.76 s → 0.42 s). Only what succeeded is learned: a group with a member that failed,
ended without reported usage (``completion_tokens`` ≥ 1) or was forgotten before the group closed is
dropped — a failed request is never a fast success (an error page is its whole response: it ends, and
fails the group, before any later first token can close it; the ext_proc relay does not report an
error status's body as a first token at all). A member that fails after its group was learned had
prefilled (a later request's first token came after it, first-come first-served), so the lesson
stands. A non-streamed request's first bytes are its whole response, so it never times a prefill (it
still counts in the FCFS order it holds). Where the engine's usage (``prompt_tokens``,
``cached_tokens``) is in before the group closes, it replaces epp's estimates of the features.

Estimator: RLS on relative error (each row scaled by ``1 / max(prediction, observation, 1 ms)``, which
also bounds any single outlier's pull), forgetting factor λ (default 0.99: the last ~100 observations
count), coefficients kept ≥ 0, each diagonal of the covariance capped at its prior's so unexcited
directions do not wind up while forgetting, and the covariance reset to the prior's when the recent
errors all lean one way (an engine that changed is re-learned in tens of requests, not hundreds).
Endpoints share what the pool learned (``PoolModel``, the same fit over every endpoint's observations):
an endpoint's estimate is the pool's fit times its own measured speed (kept relative to the pool's
current fit), moved to its own fit only as far as that predicts it better (``_Track``) — endpoints of
one kind then agree instead of differing by estimation noise, and one of another kind is told apart
within a few requests. Cost per observation: two RLS updates (own and pool), O(d²) each for d = 3
(~60 multiplications; in Python ~10 µs each) and an O(d) re-basing of the speed; per request one
prefill share and one decode observation. The pick path only reads the coefficients
(``LatencyEstimate``, replaced only when a coefficient moves by more than 2 %; the pool's republished
to every endpoint at most once per ``PUBLISH_EVERY`` observations or 4 per endpoint).

Stale evidence fades (``PoolModel.fade``). An endpoint is sent requests only while it is predicted
fastest, so one learned too slow — from a few unlucky first requests — got none to correct it (8 × 8B
synthetic, unloaded: an identical engine learned 20 % slow from 8 requests served 8 of 3,000). Its speed
relative to the pool is therefore treated as drifting back to the pool's while nothing renews it: for
``EVIDENCE_HALF_LIFE`` rounds (16; a round = one pool observation per member endpoint, so the clock is
the traffic the endpoint missed, not wall time, and a pool at rest does not fade) after a track's last
observation nothing changes; then the log of its speed and the weight of its own fit are multiplied by
``fade`` = 2^−(rounds − 16)/16 (halving every 16 rounds), and when it observes again the observations its
speed stood on count ``fade`` times as many (at most 20), so the new one moves it as much as a first one
would — a mean-reverting prior on each endpoint's speed, the pool's fit as its mean. An endpoint predicted
1.5× too slow and sent nothing is within 15 % of the pool's after ~41 rounds and gets requests again; one
really 2.4× slower (another model) is within 5 % of the pool's after ~82 rounds — the price is about one
slow request to it per ~80 rounds in which it got none, after which its first observation restores its
speed. Endpoints that serve at least once per 16 rounds are not affected at all (every engine of a
one-profile pool under load; on the 4 + 4 mix the slow kind's engines fade now and then, which moved its
TTFT p90 by ±14 % per seed, +1 % pooled over three; 32 rounds left the mix as it was but no longer fixed
the starved 8B engine within a 3,000-request run: bench/RESULTS.md, "Starved endpoints").
Cost: one integer stamp per observation; a fading endpoint's estimate moves only with the pool's
``version`` (the fade is read at the pool's ``clock``, so the pick path's caching is unchanged), which the
pool advances at most once per publish window (max(32, 4 × members) observations) while a member is
fading, after one O(members) look per window; every endpoint re-derives its estimate then, as at any
publish (O(d) each).

The prior (``PRIOR_PREFILL``, ``PRIOR_DECODE``) is a generic middle — 8 ms an iteration, 25 ms per 1K
tokens — between a 1B model on a fast GPU and a 70B-class one sharded over four. It is weak (worth
about a tenth of one observation), so an endpoint's first few first tokens already dominate.
"""

from __future__ import annotations

import math
from bisect import bisect_left, bisect_right, insort
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial

PRIOR_PREFILL = (0.008, 0.025, 0.001)
"""Seconds per iteration, per 1K uncached tokens, per 1M (new × context) token pairs."""
PRIOR_DECODE = (0.008, 0.001, 0.003)
"""Seconds per decode iteration: fixed, per 100 decoding sequences, per 100K KV tokens they hold."""
PRIOR_SPREAD = 3.0
"""Prior standard deviation of each coefficient, in multiples of its prior value."""
FORGETTING = 0.99
MERGE_GAP = 0.001
"""First tokens this close together come from one engine iteration (a decode step is several ms)."""
MIN_CHUNK = 16
"""Prefill tokens per iteration when decodes use up the whole budget (keeps the estimate finite)."""
PREFILL = "p"
DECODE = "d"
"""The two kinds of observation (``EndpointLearner.report``)."""
MAX_FOREIGN = 256
"""Other replicas' first tokens kept per endpoint (``EndpointLearner.foreign_first_token``)."""
MAX_OPEN_GROUPS = 512
"""Observations waiting for their requests' outcomes, per endpoint; older ones are dropped."""
MAX_PREFILL_SPANS = 1024
"""Learned prefill intervals kept per endpoint to take out of the inter-token times they overlap."""
WARMUP = 20
"""Own observations after which an endpoint's estimate is its own alone; before, it leans on the pool's."""
ERROR_WEIGHT = 0.05
"""Weight of each observation in the moving mean squared errors that blend own and pool fits."""
SCALE_WEIGHT = 0.05
MAX_LOG_SCALE = math.log(8)
"""An endpoint's speed relative to the pool: moving mean and variance of log ratios (plain for its
first 20), each ratio clipped to 8× either way."""
PUBLISH_CHANGE = 0.02
PUBLISH_EVERY = 32
"""Relative change of a coefficient below which an estimate is kept as it is (prediction noise is larger)."""
BIAS_WEIGHT = 0.1
RESET_BIAS = 0.3
"""Mean relative error (over ~10 observations) that means the engine changed: start learning afresh."""
EVIDENCE_HALF_LIFE = 16.0
"""Rounds of the pool (``members`` of its observations each: one per endpoint on a fair share) after which
an endpoint's own evidence, not renewed, starts to fade, and then halves its weight every as many rounds
(``PoolModel.fade``; 0 or ``inf``: never fades)."""
FADED = 1 / 128
"""Fade below which an endpoint's estimate is the pool's within 2 % (8× apart at most): no more ticks."""


class RecursiveLeastSquares:
    """``y ≈ θ·x`` by exponentially weighted recursive least squares, on relative error, with θ ≥ 0.

    Forgetting alone follows a sudden change slowly (after N steady observations the gain is about
    1 − λ, and the relative-error scaling caps each observation's pull), so a run of same-signed
    errors — their moving mean (weight ``BIAS_WEIGHT``) beyond ``RESET_BIAS`` — resets the covariance to
    the prior's: the estimate re-converges from where it is as fast as it first converged."""

    __slots__ = ("_bias", "_cap", "forgetting", "p", "resets", "theta", "updates")

    def __init__(self, prior: Sequence[float], spread: float = PRIOR_SPREAD, forgetting: float = FORGETTING) -> None:
        if not 0.0 < forgetting <= 1.0:
            raise ValueError("forgetting factor must be in (0, 1]")
        self.theta = list(prior)
        d = len(prior)
        self._cap = [(spread * max(v, 1e-9)) ** 2 for v in prior]
        self.p = [[self._cap[i] if i == j else 0.0 for j in range(d)] for i in range(d)]
        self.forgetting = forgetting
        self.updates = 0
        self.resets = 0
        self._bias = 0.0

    def predict(self, x: Sequence[float]) -> float:
        return sum(t * v for t, v in zip(self.theta, x))

    def update(self, x: Sequence[float], y: float) -> None:
        """One observation; O(d²)."""
        d = len(self.theta)
        scale = 1.0 / max(self.predict(x), y, 1e-3)
        xs = [v * scale for v in x]
        ys = y * scale
        p, lam = self.p, self.forgetting
        px = [sum(p[i][j] * xs[j] for j in range(d)) for i in range(d)]
        denom = lam + sum(xs[i] * px[i] for i in range(d))
        gain = [v / denom for v in px]
        error = ys - sum(t * v for t, v in zip(self.theta, xs))
        self._bias += (error - self._bias) * BIAS_WEIGHT
        if abs(self._bias) > RESET_BIAS:
            self._bias = 0.0
            self.resets += 1
            for i in range(d):
                for j in range(d):
                    p[i][j] = self._cap[i] if i == j else 0.0
            px = [p[i][i] * xs[i] for i in range(d)]
            denom = lam + sum(xs[i] * px[i] for i in range(d))
            gain = [v / denom for v in px]
        self.theta = [max(0.0, t + g * error) for t, g in zip(self.theta, gain)]
        for i in range(d):
            row = p[i]
            for j in range(d):
                row[j] = (row[j] - gain[i] * px[j]) / lam
        # Forgetting inflates directions no observation excites: cap each variance at its prior's.
        shrink = [min(1.0, math.sqrt(self._cap[i] / p[i][i])) if p[i][i] > 0 else 1.0 for i in range(d)]
        if any(s < 1.0 for s in shrink):
            for i in range(d):
                for j in range(d):
                    p[i][j] *= shrink[i] * shrink[j]
        self.updates += 1


@dataclass(frozen=True, slots=True)
class LatencyEstimate:
    """One endpoint's current coefficients (see the module docstring for their units)."""

    per_step: float
    per_token: float
    per_pair: float
    decode_fixed: float
    decode_per_sequence: float
    decode_per_context: float

    def batch_seconds(self, decodes: int, context: int) -> float:
        """What ``decodes`` sequences holding ``context`` tokens add to every iteration."""
        return self.decode_per_sequence * (decodes / 100) + self.decode_per_context * (context / 1e5)

    def prefill_seconds(self, new: int, cached: int, decodes: int, context: int, budget: int) -> float:
        """``new`` tokens over ``cached`` ones, in chunks of the budget the decodes leave, each chunk an
        iteration that also carries the decodes (same operations, same order as ``BatchPredictor``)."""
        if new <= 0:
            return 0.0
        chunk_max = max(MIN_CHUNK, budget - decodes)
        steps = -(-new // chunk_max)
        per_step = self.per_step + self.batch_seconds(decodes, context)
        return per_step * steps + self.per_token * (new / 1000) + self.per_pair * (new * (cached + new / 2) / 1e6)

    def decode_step_seconds(self, decodes: int, context: int) -> float:
        """One pure-decode iteration (0 when nothing decodes)."""
        if decodes <= 0:
            return 0.0
        return self.decode_fixed + self.batch_seconds(decodes, context)


def prefill_features(new: int, cached: int, steps: int) -> tuple[float, float, float]:
    return (float(steps), new / 1000, new * (cached + new / 2) / 1e6)


@dataclass(slots=True)
class _Booked:
    """A request routed here whose first token has not come yet."""

    routed_at: float
    prompt: int
    cached: int
    decodes: int
    context: int
    streamed: bool


@dataclass(slots=True)
class _Group:
    """Requests whose prefill one first-token interval timed; learned once closed, unless one failed."""

    start: float
    end: float
    members: dict[str, _Booked] = field(default_factory=dict)
    failed: bool = False
    closed: bool = False


@dataclass(slots=True)
class _Started:
    group: _Group
    first_token: float | None
    """This request's own first token (streamed only); None when swept in by a later one."""
    decodes: int
    context: int


@dataclass(slots=True)
class _Stream:
    """An ended stream whose decode observation waits for the prefill intervals that overlap it."""

    first_token: float
    end: float
    completion: int
    z: tuple[float, float, float]
    due: float
    """Up to when prefills overlapping it may have run: its end, or ``inf`` while another replica's that
    was queued here when it ended may still be running (until a later first token here, ``_prefills_over``)."""


class PoolModel:
    """The same two models fitted to every endpoint's observations. ``version`` moves only when a
    coefficient moved by more than ``PUBLISH_CHANGE`` since it last moved, and (after the first
    ``PUBLISH_EVERY`` observations) at most once per ``PUBLISH_EVERY`` observations or four per member
    endpoint, whichever is more: every endpoint's estimate is re-derived from the pool's now and then,
    not at each observation anywhere (the pick path caches per endpoint until its estimate changes), and
    that re-derivation, which costs in proportion to the endpoints, stays a constant cost per
    observation (64 endpoints: once per 256). An endpoint's own observations re-derive its own estimate
    at once, against the pool's current fit."""

    __slots__ = (
        "_published", "_since", "clock", "decode", "half_life", "members", "prefill", "tracks", "updates", "version",
    )  # fmt: skip

    def __init__(self, forgetting: float, half_life: float = EVIDENCE_HALF_LIFE) -> None:
        self.prefill = RecursiveLeastSquares(PRIOR_PREFILL, forgetting=forgetting)
        self.decode = RecursiveLeastSquares(PRIOR_DECODE, forgetting=forgetting)
        self.version = 0
        self.updates = 0
        self.members = 0
        self._since = 0
        self._published = [*PRIOR_PREFILL, *PRIOR_DECODE]
        self.half_life = half_life if half_life > 0 else math.inf
        self.clock = (0, 0)
        """The prefill and decode fits' update counts when ``version`` last moved: what estimates fade by."""
        self.tracks: list[_Track] = []
        """The members' tracks (both kinds), looked at once per publish window for one that is fading."""

    def updated(self) -> None:
        self.updates += 1
        self._since += 1
        window = max(PUBLISH_EVERY, 4 * self.members)
        if self.updates > PUBLISH_EVERY and self._since < window:
            return
        current = [*self.prefill.theta, *self.decode.theta]
        if _moved(self._published, current):
            self._published = current
        elif self.updates <= PUBLISH_EVERY or self._since % window or not self._fading():
            return  # (fading looked for once per window: O(members) per window)
        self._since = 0
        self.clock = (self.prefill.updates, self.decode.updates)
        self.version += 1

    def fade(self, track: _Track, now: int) -> float:
        """How much of an endpoint's own evidence (its speed against the pool, its own fit) still counts,
        ``now`` being the pool fit's update count: 1 for ``half_life`` rounds after the track's last
        observation, then halving every ``half_life`` rounds — the endpoint's speed may have moved since,
        so its estimate returns towards the pool's (which an endpoint predicted too slow gets no traffic
        to correct: it gets traffic again, and its next observation counts as much as its first)."""
        if track.last < 0:
            return 1.0
        rounds = (now - track.last) / max(1, self.members) - self.half_life
        return 1.0 if rounds <= 0 else 0.5 ** (rounds / self.half_life)

    def _fading(self) -> bool:
        """A member's estimate moves if the clock moves now: one has faded but not yet all the way. O(members)."""
        now = {True: self.prefill.updates, False: self.decode.updates}
        return any(FADED < self.fade(t, now[t.prefill]) < 1.0 for t in self.tracks if t.last >= 0)


def _moved(before: Sequence[float], after: Sequence[float]) -> bool:
    return any(abs(a - b) > PUBLISH_CHANGE * max(abs(b), 1e-9) for b, a in zip(before, after))


class _Track:
    """One of an endpoint's two models (prefill or decode): its own RLS fit; its speed relative to the
    pool's fit — a moving mean (and variance) of log(observed ÷ pool prediction), kept relative to the
    pool's *current* fit (``_rebase``); and how well its own fit and the scaled pool fit predicted its
    observations before learning from them (moving mean squared relative errors)."""

    __slots__ = ("_basis", "err_own", "err_pool", "last", "log_mean", "log_var", "own", "prefill", "seen", "x_mean")

    def __init__(self, prior: Sequence[float], forgetting: float, prefill: bool = True) -> None:
        self.own = RecursiveLeastSquares(prior, forgetting=forgetting)
        self.prefill = prefill
        self.log_mean = self.log_var = 0.0
        self.err_own = self.err_pool = 1.0
        self.seen = 0.0
        """Observations its speed stands on: their count, discounted by its fade when it observes again."""
        self.last = -1
        """The pool fit's update count after this track's last observation (-1: none yet)."""
        self.x_mean = [0.0] * len(prior)
        """The moving mean of its feature vectors (same weights as ``log_mean``)."""
        self._basis: list[float] | None = None
        """The pool coefficients ``log_mean`` is relative to."""

    def _rebase(self, pool: RecursiveLeastSquares) -> None:
        """Keep ``log_mean`` relative to the pool's current fit: when the pool moved, shift it by how much
        the pool's prediction of the endpoint's mean features moved (O(d)). A ratio kept against an older
        fit goes stale as the pool learns — a slow engine measured against the prior then looked as fast
        as the pool's fast ones."""
        theta = pool.theta
        basis = self._basis
        if basis is theta:
            return
        if basis is not None:
            before = sum(b * x for b, x in zip(basis, self.x_mean))
            after = sum(t * x for t, x in zip(theta, self.x_mean))
            if before > 0 and after > 0:
                self.log_mean += math.log(before / after)
        self._basis = theta

    def scale(self, pool: RecursiveLeastSquares, fade: float = 1.0) -> float:
        """The endpoint's speed relative to the pool, counted only beyond two standard errors of its
        moving mean (soft threshold): endpoints of one kind share the pool's estimate exactly instead
        of differing by noise, one that is really faster or slower is told apart within a few requests.
        Its log is multiplied by ``fade`` (``PoolModel.fade``): stale evidence returns to the pool's speed."""
        if not self.seen:
            return 1.0
        self._rebase(pool)
        weight = max(1 / self.seen, SCALE_WEIGHT)
        standard_error = math.sqrt(self.log_var * weight / (2 - weight))
        excess = max(0.0, abs(self.log_mean) - 2 * standard_error)
        return math.exp(math.copysign(excess * fade, self.log_mean))

    def observe(self, pool: RecursiveLeastSquares, x: Sequence[float], y: float, fade: float = 1.0) -> None:
        """One observation; ``fade`` (< 1 when the track's evidence went stale, ``PoolModel.fade``) discounts
        the observations its speed stands on (at most ``1 / SCALE_WEIGHT``), so this one moves it as much."""
        raw = max(pool.predict(x), 1e-6)
        if self.own.updates >= WARMUP:
            self.err_own += (_relative(y, self.own.predict(x)) ** 2 - self.err_own) * ERROR_WEIGHT
            self.err_pool += (_relative(y, self.scale(pool, fade) * raw) ** 2 - self.err_pool) * ERROR_WEIGHT
        self._rebase(pool)
        if fade < 1.0:
            self.seen = min(self.seen, 1 / SCALE_WEIGHT) * fade
        self.seen += 1
        weight = max(1 / self.seen, SCALE_WEIGHT)
        ratio = min(MAX_LOG_SCALE, max(-MAX_LOG_SCALE, math.log(max(y, 1e-6) / raw)))
        deviation = ratio - self.log_mean
        self.log_mean += deviation * weight
        self.log_var = (1 - weight) * (self.log_var + weight * deviation * deviation)
        self.x_mean = [m + (v - m) * weight for m, v in zip(self.x_mean, x)]
        self.own.update(x, y)
        pool.update(x, y)
        self.last = pool.updates

    def theta(self, pool: RecursiveLeastSquares, fade: float = 1.0) -> list[float]:
        """The pool's coefficients × this endpoint's scale, moved towards its own fit only as far as its
        own fit has been predicting it better (weight 2 × (1 − own error ÷ pool error) in [0, 1]; 0
        until ``WARMUP`` own observations), both times ``fade``."""
        scale = self.scale(pool, fade)
        w = 0.0
        if self.own.updates >= WARMUP and self.err_pool > 0:
            w = fade * min(1.0, max(0.0, 2 * (1 - self.err_own / self.err_pool)))
        return [w * a + (1 - w) * scale * b for a, b in zip(self.own.theta, pool.theta)]


def _relative(observed: float, predicted: float) -> float:
    return (observed - predicted) / max(observed, predicted, 1e-3)


@dataclass(slots=True)
class _Speculation:
    """An estimate derived ahead of its read (``EndpointLearner._speculate``), what it was derived from,
    and the tracks' re-basing state before, to undo it if unused."""

    before: tuple[tuple[float, list[float] | None], tuple[float, list[float] | None]]
    estimate: LatencyEstimate
    version: int
    pool_version: int
    prefill_fit: list[float]
    decode_fit: list[float]

    @staticmethod
    def tracks(learner: EndpointLearner) -> tuple[tuple[float, list[float] | None], tuple[float, list[float] | None]]:
        """What deriving may change: each track's speed and the pool fit it is relative to (``_rebase``)."""
        p, d = learner.prefill, learner.decode
        return (p.log_mean, p._basis), (d.log_mean, d._basis)

    def undo(self, learner: EndpointLearner) -> None:
        (learner.prefill.log_mean, learner.prefill._basis), (learner.decode.log_mean, learner.decode._basis) = self.before


class EndpointLearner:
    """One endpoint's prefill and decode models and the bookkeeping that turns its requests' events into
    observations.

    Its ``estimate`` shares what the pool learned: the pool's fit scaled by this endpoint's measured
    speed, blended with the endpoint's own fit in proportion to how well each has been predicting it.
    In a pool of one kind the pool's fit (eight times the data) wins and endpoints differ only by their
    measured scale, so estimation noise does not split requests that belong together; where an
    endpoint's shape differs (another model, another GPU) its own fit predicts better and takes over.
    ``estimate`` is the same object until it changes."""

    __slots__ = (
        "_estimate", "_foreign", "_groups", "_heard_until", "_held", "_last_first_token", "_pool_seen", "_queue",
        "_seen", "_spans", "_speculated", "_started", "_streams", "adopted", "budget", "decode", "pool", "prefill",
        "report", "version",
    )  # fmt: skip

    def __init__(self, budget: int, forgetting: float = FORGETTING, pool: PoolModel | None = None,
                 half_life: float = EVIDENCE_HALF_LIFE) -> None:
        self.budget = budget
        self.prefill = _Track(PRIOR_PREFILL, forgetting)
        self.decode = _Track(PRIOR_DECODE, forgetting, prefill=False)
        self.pool = pool or PoolModel(forgetting, half_life)
        self.pool.tracks += (self.prefill, self.decode)
        self.version = 0
        self._estimate = LatencyEstimate(*PRIOR_PREFILL, *PRIOR_DECODE)
        self._seen = self._pool_seen = -1  # the versions the estimate was derived at
        self._speculated: _Speculation | None = None
        self._queue: dict[str, _Booked] = {}
        self._started: dict[str, _Started] = {}
        self._groups: deque[_Group] = deque()
        self._last_first_token = float("-inf")
        self._spans: tuple[list[float], list[float], list[float]] = ([], [], [0.0])
        """The learned prefill intervals, in time order (disjoint): starts, ends, and the running sum of the
        seconds each added beyond the decode steps it also made (``_prefill_extra``)."""
        self._streams: deque[_Stream] = deque()
        """Ended streams waiting for this replica's prefill that was running when they ended to be timed."""
        self._held: list[_Stream] = []
        """Ended streams waiting for the other replicas' prefill intervals that overlap them (``peers_heard``)."""
        self._heard_until = math.inf
        """Every other replica's prefill interval here that ended before this has been heard (``peers_heard``);
        ``inf``: no other replica (a single replica learns an ended stream at once)."""
        self._foreign: list[float] = []
        """Other replicas' first tokens here (shared state), in time order: bounds of this one's observations."""
        self.adopted: LatencyEstimate | None = None
        """Set by shared state (``adopt``): another replica's estimate, used while it has learned more."""
        self.report: Callable[[str, Sequence[float], float, Sequence[float]], None] | None = None
        """Told each observation this endpoint's own requests made (``PREFILL`` or ``DECODE``, features,
        seconds, and for a prefill its interval: start, end, extra seconds as ``_span`` records it; empty
        for a decode), for active-active replicas to learn from each other's (``LatencyLearner.report``)."""

    @property
    def estimate(self) -> LatencyEstimate:
        """What predictions use: an adopted estimate (shared state), else this replica's own."""
        return self.adopted or self.own_estimate

    def adopt(self, estimate: LatencyEstimate | None) -> None:
        """Use ``estimate`` (None: this replica's own again); kept as the same object while it is equal,
        so readers that cache per estimate object (``BatchPredictor``) do not recompute."""
        if estimate != self.adopted:
            self.adopted = estimate

    @property
    def own_estimate(self) -> LatencyEstimate:
        pool = self.pool
        if self._seen != self.version or self._pool_seen != pool.version:  # read per endpoint per pick: kept cheap
            self._seen, self._pool_seen = self.version, pool.version
            self._estimate = self._derived(pool)
        return self._estimate

    @property
    def observations(self) -> int:
        """Prefill observations learned from."""
        return self.prefill.own.updates

    # -- events -----------------------------------------------------------------------------------
    def routed(self, request_id: str, now: float, prompt: int, cached: int, decodes: int, context: int,
               streamed: bool) -> None:
        """Booked here: ``cached`` is the predicted hit; (``decodes``, ``context``) the predicted load."""
        self.forget(request_id)
        self._queue[request_id] = _Booked(now, prompt, cached, decodes, context, streamed)

    def started(self, request_id: str, now: float, decodes: int, context: int) -> None:
        """First response bytes of ``request_id``: it and everything routed before it have prefilled."""
        queue = self._queue
        if request_id not in queue or not queue[request_id].streamed:
            return  # not booked here, or a non-streamed response (its first bytes are its end)
        members: list[tuple[str, _Booked]] = []
        while queue:
            rid = next(iter(queue))
            members.append((rid, queue.pop(rid)))
            if rid == request_id:
                break
        first_routed = members[0][1].routed_at
        last = self._groups[-1] if self._groups else None
        if (last is not None and not last.closed and now - self._last_first_token <= MERGE_GAP
                and first_routed < self._last_first_token):
            group = last
            group.end = max(group.end, now)
        else:
            if last is not None:
                last.closed = True
                self._settle()
            group = _Group(max(self._last_first_token, first_routed), now)
            self._groups.append(group)
            if len(self._groups) > MAX_OPEN_GROUPS:
                self._drop(self._groups.popleft())
        for rid, booked in members:
            group.members[rid] = booked
            self._started[rid] = _Started(group, now if rid == request_id else None, decodes, context)
        self._last_first_token = max(self._last_first_token, now)
        if self._heard_until < math.inf:  # first come, first served: what was queued before it is over
            self._prefills_over(now)

    def foreign_first_token(self, at: float) -> None:
        """Another replica's request here had its first token at ``at`` (active-active replicas, heard through
        shared state): its prefill ran before it, so an observation of this replica's that spans ``at``
        starts there instead (``_learn``) — else each replica's prefills look as slow as everyone's
        together, and N replicas predict every endpoint up to N times too slow."""
        foreign = self._foreign
        if not foreign or at >= foreign[-1]:
            foreign.append(at)
        else:
            insort(foreign, at)
        if len(foreign) > MAX_FOREIGN:
            del foreign[0]
        self._prefills_over(at)

    def _prefills_over(self, at: float) -> None:
        """A first token here at ``at``: the prefill running when a stream ended before it is over by then,
        and any later one starts after that stream's end (first come, first served), so a stream that waited
        for the others' (``finished``) waits only for their intervals up to ``at``. O(streams held)."""
        for stream in (*self._held, *self._streams):
            if stream.due == math.inf and stream.end <= at:
                stream.due = at

    def finished(self, request_id: str, now: float, usage: Mapping[str, int], decodes: int, context: int,
                 foreign_queued: bool = False) -> None:
        """The response ended; ``usage`` as the engine reported it (empty: unknown, learned as a failure);
        ``foreign_queued``: other replicas' requests are queued here without a first token (shared state),
        so one of their prefills may be running now."""
        self._queue.pop(request_id, None)  # ended without a first byte: it timed nothing
        started = self._started.pop(request_id, None)
        if started is None:
            return
        group = started.group
        completion = usage.get("completion_tokens", 0)
        ok = completion >= 1
        booked = group.members.get(request_id)
        if booked is not None and not group.closed:
            if not ok:
                group.failed = True
            else:
                prompt = usage.get("prompt_tokens", booked.prompt)
                cached = usage.get("cached_tokens", booked.cached)
                booked.prompt, booked.cached = prompt, min(cached, max(0, prompt - 1))
        self._close(now)
        if ok and started.first_token is not None and completion >= 2:
            n = (started.decodes + decodes) / 2
            ctx = (started.context + context) / 2
            waits = foreign_queued and self._heard_until < math.inf
            stream = _Stream(started.first_token, now, completion, (1.0, n / 100, ctx / 1e5),
                             math.inf if waits else now)
            if self._queue:  # a prefill may be running now: learn the stream once its interval is known
                self._streams.append(stream)
                if len(self._streams) > MAX_OPEN_GROUPS:
                    self._observe_stream(self._streams.popleft())
            else:
                self._release(stream)
        self._settle()
        if not self._queue:  # nothing is prefilling here: no stream waits for a prefill's interval
            while self._streams:
                self._release(self._streams.popleft())

    def _release(self, stream: _Stream) -> None:
        """This replica's prefills that overlap ``stream`` are timed: learn it, unless another replica's
        that may overlap it is not heard of yet (held until ``peers_heard`` says it is)."""
        if stream.due <= self._heard_until:
            self._observe_stream(stream)
            return
        held = self._held
        held.append(stream)
        if len(held) > MAX_OPEN_GROUPS:
            self._observe_stream(held.pop(0))

    def peers_heard(self, until: float, foreign_queued: bool) -> None:
        """Shared state's round: every other replica's prefill interval here that ended before ``until`` has
        been heard (each replica learns what is final, ``flush``, before it exports; ``inf``: no other
        replica, or none reachable); ``foreign_queued`` as in ``finished``, now. Learns the held streams
        whose overlapping prefills are all heard of, in the order they ended. O(held)."""
        self._heard_until = until
        held = self._held
        if not held:
            return
        if not foreign_queued:  # the others' prefills queued when a stream ended have all started since
            for stream in held:
                if stream.due == math.inf:
                    stream.due = stream.end
        ready = [s for s in held if s.due <= until]
        if ready:
            self._held = [s for s in held if s.due > until]
            for stream in ready:
                self._observe_stream(stream)

    def flush(self, now: float) -> None:
        """Learn what is final by ``now`` (an observation past ``MERGE_GAP`` after its first token) without
        waiting for the next event here: shared state's round calls it before each export, so every
        prefill interval this replica times reaches the others within one round of its end and their
        ended streams need not wait for it longer (``peers_heard``)."""
        self._close(now)

    def _observe_stream(self, stream: _Stream) -> None:
        """A stream's mean inter-token time observes the decode step, once the prefills that shared its
        iterations (and lengthened them) are taken out."""
        first_token, end = stream.first_token, stream.end
        seconds = end - first_token
        itl = max(seconds - self._prefill_extra(first_token, end), seconds / 20) / (stream.completion - 1)
        self.observe_decode(stream.z, itl)
        if self.report is not None:
            self.report(DECODE, stream.z, itl, ())

    def forget(self, request_id: str) -> None:
        """The request is gone without an outcome (expired, or its id reused): it teaches nothing."""
        self._queue.pop(request_id, None)
        started = self._started.pop(request_id, None)
        if started is not None and request_id in started.group.members and not started.group.closed:
            started.group.failed = True

    # -- learning ---------------------------------------------------------------------------------
    def _close(self, now: float) -> None:
        """Past ``MERGE_GAP`` after the newest group's first token no later one can join it: learn it."""
        groups = self._groups
        if groups and not groups[-1].closed and now > groups[-1].end + MERGE_GAP:
            groups[-1].closed = True
            self._settle()

    def _settle(self) -> None:
        """Learn from (or drop) the closed groups, oldest first."""
        groups = self._groups
        while groups and groups[0].closed:
            group = groups.popleft()
            if not group.failed:
                self._learn(group)

    def _learn(self, group: _Group) -> None:
        start = group.start
        foreign = self._foreign
        if foreign:
            del foreign[: bisect_right(foreign, start)]  # ended before this observation: no later one spans them
            if foreign and foreign[0] <= group.end:
                before_iteration = bisect_right(foreign, group.end - MERGE_GAP)
                if bisect_right(foreign, group.end) > before_iteration:
                    return  # another replica's prefill ended in this one's iteration: its share is not known
                start = foreign[before_iteration - 1]
        members = list(group.members.values())
        new = sum(max(1, b.prompt - b.cached) for b in members)
        pairs = sum((p := max(1, b.prompt - b.cached)) * (b.cached + p / 2) for b in members)
        decodes = round(sum(b.decodes for b in members) / len(members))
        context = round(sum(b.context for b in members) / len(members))
        steps = -(-new // max(MIN_CHUNK, self.budget - decodes))
        x = (float(steps), new / 1000, pairs / 1e6)
        estimate = self.estimate
        seconds = group.end - start - steps * estimate.batch_seconds(decodes, context)
        extra = max(0.0, seconds - steps * estimate.decode_fixed)
        self._span(start, group.end, extra)
        self.observe_prefill(x, max(0.0, seconds))
        streams = self._streams
        while streams and streams[0].end <= group.end:
            self._release(streams.popleft())
        if self.report is not None:
            self.report(PREFILL, x, max(0.0, seconds), (start, group.end, extra))

    def foreign_prefill(self, start: float, end: float, extra: float) -> None:
        """Another replica timed a prefill here from ``start`` to ``end`` that added ``extra`` seconds to the
        decodes' iterations (active-active replicas, heard through shared state): a stream of this
        replica's whose window holds it takes it out of its inter-token time as it does its own
        (``_observe_stream``) — else each replica learns the decode step with the others' prefills in it."""
        self._span(start, end, extra)

    def _span(self, start: float, end: float, extra: float) -> None:
        """Record a learned prefill interval and the seconds it added to the decodes' iterations; one that
        overlaps a recorded interval is skipped. Another replica's may arrive late: it is inserted in order."""
        starts, ends, total = self._spans
        if end <= start:
            return
        if not ends or start >= ends[-1]:
            starts.append(start)
            ends.append(end)
            total.append(total[-1] + extra)
        else:
            i = bisect_right(starts, start)
            if (i and ends[i - 1] > start) or (i < len(starts) and starts[i] < end):
                return
            starts.insert(i, start)
            ends.insert(i, end)
            total.insert(i + 1, total[i] + extra)
            for j in range(i + 2, len(total)):
                total[j] += extra
        if len(starts) > 2 * MAX_PREFILL_SPANS:
            del starts[:MAX_PREFILL_SPANS], ends[:MAX_PREFILL_SPANS], total[:MAX_PREFILL_SPANS]

    def _prefill_extra(self, begin: float, end: float) -> float:
        """Seconds the learned prefills added to the iterations between ``begin`` and ``end`` beyond the
        decode steps they also were (each prefill iteration carries every running decode, chunked prefill):
        a stream's inter-token time is its decode step only once they are taken out. A prefill interval
        partly inside counts in proportion. O(log spans)."""
        starts, ends, total = self._spans
        first = bisect_right(ends, begin)
        last = bisect_left(starts, end)
        if first >= last:
            return 0.0
        extra = total[last] - total[first]
        for i in {first, last - 1}:
            length = ends[i] - starts[i]
            inside = min(ends[i], end) - max(starts[i], begin)
            extra -= (total[i + 1] - total[i]) * (1 - max(0.0, inside) / length)
        return max(0.0, extra)

    def observe_prefill(self, x: Sequence[float], seconds: float) -> None:
        """One prefill observation on ``prefill_features``, for this endpoint and the pool."""
        self._unspeculate()
        pool = self.pool
        self.prefill.observe(pool.prefill, x, seconds, pool.fade(self.prefill, pool.prefill.updates))
        self._changed()

    def observe_decode(self, z: Sequence[float], seconds: float) -> None:
        """One decode-step observation on ``[1, sequences / 100, context / 1e5]``."""
        self._unspeculate()
        pool = self.pool
        self.decode.observe(pool.decode, z, seconds, pool.fade(self.decode, pool.decode.updates))
        self._changed()

    # -- the estimate, derived ahead of the pick ---------------------------------------------------
    # ``own_estimate`` derives the estimate at its first read after a change, against the pool's fit at
    # that moment (and re-bases the tracks' speeds to it). A pick reads it right after the endpoint
    # learned, so ``_changed`` derives it at once, on the response path, and keeps the result with what
    # it was derived from: the read uses it only if nothing it depends on moved since (this endpoint's
    # version, the pool's version and fit objects: any other endpoint's observation replaces the pool's
    # fit); otherwise it undoes the tracks' re-basing and derives as it would have. Either way the
    # estimate, and every later one, is the one the lazy derivation gives, bit for bit.

    def _derived(self, pool: PoolModel) -> LatencyEstimate:
        spec = self._speculated
        if spec is not None:
            self._speculated = None
            if (spec.version == self.version and spec.pool_version == pool.version
                    and spec.prefill_fit is pool.prefill.theta and spec.decode_fit is pool.decode.theta):
                return spec.estimate  # ``_estimate``, which it was compared with, is only set by a read
            spec.undo(self)
        return self._replaced(self._theta(pool))

    def _theta(self, pool: PoolModel) -> list[float]:
        """The six coefficients, each track faded by the pool's clock (which moves only with its version)."""
        p, d = self.prefill, self.decode
        return [*p.theta(pool.prefill, pool.fade(p, pool.clock[0])), *d.theta(pool.decode, pool.fade(d, pool.clock[1]))]

    def _replaced(self, fresh: list[float]) -> LatencyEstimate:
        """The estimate with coefficients ``fresh``: the current one unless one moved by more than
        ``PUBLISH_CHANGE`` (prediction noise is larger)."""
        old = self._estimate
        if _moved([old.per_step, old.per_token, old.per_pair, old.decode_fixed, old.decode_per_sequence,
                   old.decode_per_context], fresh):
            return LatencyEstimate(*fresh)
        return old

    def _speculate(self) -> None:
        pool = self.pool
        before = _Speculation.tracks(self)
        estimate = self._replaced(self._theta(pool))
        self._speculated = _Speculation(before, estimate, self.version, pool.version, pool.prefill.theta,
                                        pool.decode.theta)

    def _unspeculate(self) -> None:
        """Undo a derivation no read used (an observation re-bases the tracks itself)."""
        spec = self._speculated
        if spec is not None:
            self._speculated = None
            spec.undo(self)

    def _drop(self, group: _Group) -> None:
        for rid in group.members:
            self._started.pop(rid, None)

    def _changed(self) -> None:
        self.version += 1
        self.pool.updated()
        self._speculate()


class LatencyLearner:
    """``EndpointLearner`` per endpoint name, created on first use."""

    __slots__ = ("budget", "endpoints", "forgetting", "generation", "pool", "report")

    def __init__(self, budget: int, forgetting: float = FORGETTING, half_life: float = EVIDENCE_HALF_LIFE) -> None:
        self.budget = budget
        self.forgetting = forgetting
        self.pool = PoolModel(forgetting, half_life)
        self.endpoints: dict[str, EndpointLearner] = {}
        self.generation = 0
        """Moves when an endpoint's learner is removed: a reader holding learner objects re-fetches them."""
        self.report: Callable[[str, str, Sequence[float], float, Sequence[float]], None] | None = None
        """Told (endpoint, ``PREFILL`` or ``DECODE``, features, seconds, a prefill's interval) of every observation the endpoints'
        own requests made: active-active replicas pass them to each other, so each learns from all the
        requests an endpoint serves, not the 1/N it routed (N replicas learning apart learn N times slower)."""

    def __getitem__(self, name: str) -> EndpointLearner:
        learner = self.endpoints.get(name)
        if learner is None:
            learner = self.endpoints[name] = EndpointLearner(self.budget, self.forgetting, self.pool)
            self.pool.members += 1
            if self.report is not None:
                learner.report = partial(self.report, name)
        return learner

    def estimate(self, name: str) -> LatencyEstimate:
        return self[name].estimate

    def remove(self, name: str) -> None:
        learner = self.endpoints.pop(name, None)
        if learner is not None:
            self.generation += 1
            self.pool.members -= 1
            self.pool.tracks = [t for t in self.pool.tracks if t is not learner.prefill and t is not learner.decode]
