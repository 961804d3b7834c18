"""Why N picker replicas sharing state route differently from one: what each replica learned and predicted.

Bench-only (it wraps the TTFT scorer's hooks from outside; nothing here is shipped). One ``epp replay``
run of ``default`` (same trace, engines and rate as the CLI; ``--seed`` is the replicas' tie-break seed,
the engines have no randomness), with ``--mode``:

* ``shared``: the product (``--replicas N --shared-state``; with ``--replicas 1``, one replica);
* ``learner``: an oracle — every replica uses replica 0's latency learner, which every replica's
  requests feed directly (no observation events, nothing lost or reordered), the rest shared as shipped;
* ``all``: every replica uses replica 0's learner *and* its ledgers (in-flight work, zero lag): the
  replicas differ from one picker only in taking requests in turn, each with its own tie-break seed.

Printed: the run's hit ratio and TTFT percentiles, per engine kind the predicted against the actual
TTFT of the requests routed there, per replica every endpoint's learned cold prefill of a 4K-token
prompt and its observation count at the end, and how many picks chose an endpoint while another
replica's booking there was still on its way (the 1 ms event lag, ``VirtualExchange``).
``--probe-every S`` also reads every replica's estimates every S seconds of virtual time (an extra
read only: it can change an estimate only by when the 2 % hysteresis of ``EndpointLearner`` applies).

    python bench/shared_diag.py TRACE --profile llama-3.1-8b-h100:4,llama-3.2-1b-h100:4 --rate-scale 12.337686603263528 \\
        --replicas 2 --mode shared --seed 0 [--max-requests 2000] [--probe-every 5]
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence

from epp._util.clock import VirtualClock
from epp.engine.config import EngineConfig
from epp.replay.offline import ClusterSpec, OfflineReplay, parse_profiles
from epp.replay.policies import Policy, resolve
from epp.replay.replicas import Replicas
from epp.replay.summary import percentile, summarize
from epp.replay.traces import Trace, read_trace
from epp.request import LLMRequest
from epp.scheduling import Scheduler
from epp.scheduling.framework import CycleState, SchedulingResult
from epp.scheduling.plugins.scorers.ttft_predictor import TTFTPredictorScorer
from epp.scheduling.ttft import learn


def replica_args(ap: argparse.ArgumentParser) -> None:
    """The arguments of a one-run diagnosis of ``default``'s replicas (here and bench/shared_late.py)."""
    ap.add_argument("trace")
    ap.add_argument("--profile", default="llama-3.1-8b-h100:4,llama-3.2-1b-h100:4")
    ap.add_argument("--engines", type=int, default=8)
    ap.add_argument("--rate-scale", type=float, required=True)
    ap.add_argument("--replicas", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--max-requests", type=int, default=2000)


def replica_run(a: argparse.Namespace) -> tuple[
        list[str], ClusterSpec, Trace, Policy, VirtualClock, Replicas, list[Scheduler], str]:
    """What ``epp replay --policy default --replicas N [--shared-state]`` builds for ``replica_args``: the
    engines' profiles, the cluster, the trace's head, the policy, the clock, the replicas, their
    schedulers (built, not run: the caller wraps hooks first) and the prefix view's label."""
    profiles = parse_profiles(a.profile, a.engines)
    cluster = ClusterSpec(engines=a.engines, engine=EngineConfig(profile=profiles[0], seed=a.seed),
                          profiles=profiles if len(set(profiles)) > 1 else ())
    trace = read_trace(a.trace, a.max_requests)
    policy = resolve("default")
    clock = VirtualClock()
    replicas = Replicas(a.replicas, shared_state=a.replicas > 1)
    schedulers, view = replicas.build(policy, clock, a.seed)
    return profiles, cluster, trace, policy, clock, replicas, schedulers, view


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    replica_args(ap)
    ap.add_argument("--mode", choices=("shared", "learner", "all"), default="shared")
    ap.add_argument("--probe-every", type=float, default=0.0)
    ap.add_argument("--early", type=float, default=10.0, help="also the errors of requests arriving before this (s)")
    a = ap.parse_args(argv)

    profiles, cluster, trace, policy, clock, replicas, schedulers, view = replica_run(a)
    scorers = [next(p for p in s.plugins if isinstance(p, TTFTPredictorScorer)) for s in schedulers]
    first = scorers[0]
    if a.mode in ("learner", "all"):
        first.learner.report = None  # every replica's own requests reach the one learner directly
        learn.EndpointLearner.foreign_first_token = lambda self, at: None  # type: ignore[method-assign]
        for s in scorers[1:]:
            s.learner = first.learner
            s.predictor.predictor.learner = first.learner
    exchange = replicas.exchange(schedulers, clock)
    if a.mode == "all":
        for s in scorers[1:]:
            s.ledgers, s.recency, s._booking_ids = first.ledgers, first.recency, first._booking_ids
        if exchange is not None:  # the TTFT scorer no longer exchanges anything (the prefix view stays shared)
            for plugins in exchange.replicas:
                for name in [n for n, p in plugins.items() if isinstance(p, TTFTPredictorScorer)]:
                    del plugins[name]
        for s in scorers:
            s.on_event = None

    predicted: dict[str, tuple[int, float]] = {}
    herd = [0]
    book = TTFTPredictorScorer.pre_request

    def pre_request(self: TTFTPredictorScorer, cycle: CycleState, request: LLMRequest,
                    result: SchedulingResult) -> None:  # fmt: skip
        if result.endpoints:
            name = result.endpoints[0].name
            p = self.booked(cycle, name)
            if p is not None:
                predicted[request.request_id] = (scorers.index(self), p.ttft)
            me = scorers.index(self)
            token = f'"b","{name}"'.encode()
            if exchange is not None and any(s != me and token in blob for _, s, _, blob in exchange._in_flight):
                herd[0] += 1
        book(self, cycle, request, result)

    TTFTPredictorScorer.pre_request = pre_request  # type: ignore[method-assign]
    if a.probe_every > 0:
        poll = OfflineReplay._poll
        last = [float("-inf")]

        def probed(self: OfflineReplay, tick: float) -> None:
            poll(self, tick)
            if tick - last[0] >= a.probe_every:
                last[0] = tick
                for s in scorers:
                    for learner in s.learner.endpoints.values():
                        _ = learner.estimate

        OfflineReplay._poll = probed  # type: ignore[method-assign]

    run = OfflineReplay(trace.requests, schedulers, cluster, clock, a.rate_scale, admission=policy.admission,
                        exchange=exchange).run()  # fmt: skip
    summary = summarize(run, policy.label, a.rate_scale, 0.0, 0.0, replicas=a.replicas, prefix_view=view)
    print(json.dumps({k: summary[k] for k in ("hit_ratio", "ttft_p50", "ttft_p90", "ttft_p99")}))
    print("dispatched per engine", run.dispatched, f"picks with another replica's booking there in flight: {herd[0]}")
    for kind in sorted(set(profiles)):
        engines = {i for i, p in enumerate(profiles) if p == kind}
        rows = [(r.first_token - r.arrival, predicted[str(i)][1], r.arrival) for i, r in enumerate(run.records)
                if r.engine in engines and r.first_token is not None and str(i) in predicted]  # fmt: skip
        actual = sorted(t for t, _, _ in rows)
        errors = sorted(t - p for t, p, _ in rows)
        early = sorted(t - p for t, p, arrival in rows if arrival < a.early)
        print(f"{kind}: {len(rows)} requests, TTFT p50/p90 {_p(actual, 50)}/{_p(actual, 90)} s, actual − predicted "
              f"p10/p50/p90 {_p(errors, 10)}/{_p(errors, 50)}/{_p(errors, 90)} s; of the {len(early)} arriving in the "
              f"first {a.early:g} s p50/p90 {_p(early, 50)}/{_p(early, 90)} s")
    replicas_seen = scorers[:1] if a.mode in ("learner", "all") else scorers
    for r, s in enumerate(replicas_seen):
        learned = " ".join(f"{name}:{e.estimate.prefill_seconds(4000, 0, 0, 0, 8192):.4f}/{e.observations}"
                           for name, e in sorted(s.learner.endpoints.items()))  # fmt: skip
        print(f"replica {r}: learned 4K-token cold prefill s / observations: {learned}")


def _p(values: list[float], p: float) -> str:
    v = percentile(values, p)
    return "-" if v is None else f"{v:.3f}"


if __name__ == "__main__":
    main()
