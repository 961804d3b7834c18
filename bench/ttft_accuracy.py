"""How well ``default`` predicts time to first token, per engine, on engines it is not told about.

Replays the head of a trace with ``default`` (or ``--policy``, any config with a
``ttft-predictor-scorer``) on 8 simulated engines of ``--profile`` (one profile or a mix, as ``epp
replay`` takes it) at ``--rate`` × the trace's speed, records the prediction the scorer booked for each
request on the engine it chose, and prints per engine: requests, median and p10/p90 of actual ÷
predicted TTFT, mean actual and predicted TTFT, and the learned coefficients beside the ones the
simulator's latency model really uses (what the learner should converge to; it is never given them).

    python bench/ttft_accuracy.py traces/mooncake_fast25_synthetic_trace.jsonl --profile llama-3.2-1b-h100 \\
        --rate 14.7 [--max-requests 500] [--policy default]
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

from epp._util.clock import VirtualClock
from epp.engine.config import EngineConfig
from epp.replay.offline import ClusterSpec, OfflineReplay, parse_profiles
from epp.replay.policies import resolve
from epp.replay.runner import Job
from epp.replay.traces import read_trace
from epp.scheduling.framework import CycleState, SchedulingResult
from epp.scheduling.plugins.scorers.ttft_predictor import TTFTPredictorScorer
from epp.request import LLMRequest
from epp.scheduling.ttft import Prediction

ENGINES = 8


def record_bookings(scorer: TTFTPredictorScorer) -> dict[str, Prediction]:
    """Per request id, the prediction ``scorer`` booked on the endpoint it was sent to, filled as the run goes."""
    booked: dict[str, Prediction] = {}
    pre_request = scorer.pre_request

    def record(cycle: CycleState, request: LLMRequest, result: SchedulingResult) -> None:
        pre_request(cycle, request, result)
        if result.endpoints:
            prediction = scorer.booked(cycle, result.endpoints[0].name)
            if prediction is not None:
                booked[request.request_id] = prediction

    scorer.pre_request = record  # type: ignore[method-assign]  # observe what the scorer booked
    return booked


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("trace", type=Path)
    parser.add_argument("--profile", default="llama-3.2-1b-h100", help="engine profile, or a mix p:4,q:4")
    parser.add_argument("--rate", type=float, default=1.0, help="rate scale (× the trace's speed)")
    parser.add_argument("--max-requests", type=int, default=500, help="head of the trace (0 = all)")
    parser.add_argument("--policy", default="default", help="preset or config with a ttft-predictor-scorer")
    args = parser.parse_args()
    profiles = parse_profiles(args.profile, ENGINES)
    cluster = ClusterSpec(engines=ENGINES, engine=EngineConfig(profile=profiles[0]),
                          profiles=profiles if len(set(profiles)) > 1 else ())
    trace = read_trace(args.trace, args.max_requests or None)
    policy = resolve(args.policy)
    clock = VirtualClock()
    schedulers, _ = Job(args.policy, args.rate).replicas.build(policy, clock, 0)
    scorer = next((p for p in schedulers[0].plugins if isinstance(p, TTFTPredictorScorer)), None)
    if scorer is None:
        print(f"{args.policy}: no ttft-predictor-scorer to read predictions from", file=sys.stderr)
        return 2
    booked = record_bookings(scorer)
    run = OfflineReplay(trace.requests, schedulers, cluster, clock, args.rate, admission=policy.admission).run()
    per_engine: dict[int, list[tuple[float, float]]] = {}
    for i, r in enumerate(run.records):
        prediction = booked.get(str(i))
        if prediction is not None and r.first_token is not None and r.routed is not None:
            per_engine.setdefault(r.engine, []).append((prediction.ttft, r.first_token - r.routed))
    print(f"{args.policy} ×{args.rate:g} on {cluster.label}, first {len(trace.requests)} requests of {args.trace.name}")
    print("engine profile                  n  act÷pred p50   p10   p90  mean act s  mean pred s")
    for e in sorted(per_engine):
        rows = per_engine[e]
        ratios = sorted(actual / max(predicted, 1e-3) for predicted, actual in rows)
        print(f"{e:6d} {cluster.engine_config(e).profile:22s} {len(rows):4d} {statistics.median(ratios):8.2f} "
              f"{ratios[len(ratios) // 10]:5.2f} {ratios[9 * len(ratios) // 10]:5.2f} "
              f"{statistics.mean(a for _, a in rows):10.3f} {statistics.mean(p for p, _ in rows):12.3f}")
    print("\nlearned (per step s, per 1K new tokens s, per 1M token pairs s | decode step s) beside the simulator's")
    for e in sorted(per_engine):
        est = scorer.learner.estimate(f"engine-{e}")
        model = cluster.engine_config(e).latency_model()
        print(f"{e:6d} learned {est.per_step:.4f} {est.per_token:.4f} {est.per_pair:.6f} | {est.decode_fixed:.4f}   "
              f"simulator {model.floor + model.weight_read:.4f} {model.a * 1e3:.4f} {model.b * 1e6:.6f} | "
              f"{model.floor + model.weight_read:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
