"""Diagnostic only (bench; it reads the simulator): a preset replayed with every endpoint's learned estimate
pinned to its engine's own ``LatencyModel`` (``EndpointLearner.adopt``, as shared state adopts another
replica's): per iteration ``floor``, per token ``a``, per token pair ``b``, decode ``floor + weight_read``
and its KV read per context token. It tells what the policy's cost formula reaches with the engines
known exactly, apart from the learner's errors. Prints TTFT p90 and hit per rate and pooled.

    python bench/floor_pinned.py traces/mooncake_fast25_synthetic_trace.jsonl \\
        llama-3.1-8b-h100:4,llama-3.2-1b-h100:4 12.337686603263528 default 0.98,0.99,1,1.01,1.02
"""

import sys
from pathlib import Path

import floor as F  # bench/ is on sys.path when run as a script
from epp._util.clock import VirtualClock
from epp.engine.config import EngineConfig
from epp.replay.offline import ClusterSpec, OfflineReplay, parse_profiles
from epp.replay.policies import resolve
from epp.replay.runner import Job
from epp.replay.summary import percentile
from epp.replay.traces import read_trace
from epp.scheduling.plugins.scorers.ttft_predictor import TTFTPredictorScorer
from epp.scheduling.ttft.learn import LatencyEstimate


def main() -> None:
    trace, profile, rate, spec = sys.argv[1], sys.argv[2], float(sys.argv[3]), sys.argv[4]
    spread = [float(x) for x in sys.argv[5].split(",")] if len(sys.argv) > 5 else [1.0]
    profiles = parse_profiles(profile, F.ENGINES)
    cluster = ClusterSpec(engines=F.ENGINES, engine=EngineConfig(profile=profiles[0]), profiles=profiles)
    requests = read_trace(Path(trace), 500).requests

    def exact(e: int) -> LatencyEstimate:
        m = cluster.engine_config(e).latency_model()
        return LatencyEstimate(m.floor, m.a * 1e3, m.b * 1e6, m.floor + m.weight_read, 0.0, m.kv_read_per_token * 1e5)

    pooled: list[float] = []
    for factor in spread:
        scale = rate * factor
        policy, clock, job = resolve(spec), VirtualClock(), Job(spec, scale)
        schedulers, _ = job.replicas.build(policy, clock, job.seed)
        scorer = next(p for p in schedulers[0].plugins if isinstance(p, TTFTPredictorScorer))
        for e in range(cluster.engines):
            scorer.learner[f"engine-{e}"].adopt(exact(e))
        run = OfflineReplay(requests, schedulers, cluster, clock, scale, admission=policy.admission,
                            exchange=job.replicas.exchange(schedulers, clock)).run()
        ttfts = sorted(r.first_token - r.arrival for r in run.records if r.first_token is not None)
        pooled += ttfts
        print(f"×{scale:.4f} p90 {percentile(ttfts, 90):.3f} hit {F.hit_ratio(run):.3%}", flush=True)
    print(f"pooled p90 {percentile(sorted(pooled), 90):.3f}")


if __name__ == "__main__":
    main()
