"""How late the other replicas' prefill intervals reach a replica, and how many of its streams' decode
observations were learned without one that overlaps them (bench-only: it wraps ``EndpointLearner`` from
outside; nothing here is shipped). One ``epp replay`` run of ``default`` with ``--replicas N
--shared-state`` (the engines have no randomness; ``--seed`` is the replicas' tie-break seed).

Printed: the run's hit ratio and TTFT percentiles; prefill and decode observations learned in the first
10 s per replica; how long after its end each peer's interval arrived and each own one was learned; how
long after its end each stream was learned; and, per stream, the prefill extra it had taken out when it
was learned against what every interval recorded by the end of the run gives (missed: those heard after
it was learned, (a) ending after the stream's end, (b) before), as the ratio of the inter-token times.

``--off flush`` / ``--off hold`` switch one half of the change off (``flush``: a replica learns what is
final only at its next event on the endpoint, not at each export; ``hold``: ended streams never wait for
the others' intervals); ``--cli`` then runs ``epp replay`` itself with the rest of the arguments.

    python bench/shared_late.py TRACE --profile llama-3.1-8b-h100:4,llama-3.2-1b-h100:4 \\
        --rate-scale 12.337686603263528 --replicas 3 --seed 0 [--max-requests 2000] [--off flush|hold]
    python bench/shared_late.py --off hold --cli replay TRACE --policy default --profile ... --replicas 2 --shared-state ...
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

from epp.replay.offline import OfflineReplay
from epp.replay.summary import percentile, summarize
from epp.scheduling.ttft import learn
from shared_diag import replica_args, replica_run  # bench/ is on sys.path when run as a script


def switch_off(half: str) -> None:
    if half == "flush":
        learn.EndpointLearner.flush = lambda self, now: None  # type: ignore[method-assign]
    elif half == "hold":
        heard = learn.EndpointLearner.peers_heard
        finished = learn.EndpointLearner.finished
        learn.EndpointLearner.peers_heard = (  # type: ignore[method-assign]
            lambda self, until, queued: heard(self, math.inf, queued))
        learn.EndpointLearner.finished = (  # type: ignore[method-assign]
            lambda self, rid, now, usage, d, c, foreign_queued=False: finished(self, rid, now, usage, d, c, False))


def main(argv: Sequence[str] | None = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    if "--cli" in args:
        i = args.index("--cli")
        if "--off" in args[:i]:
            switch_off(args[args.index("--off") + 1])
        from epp.cli import main as cli

        sys.argv = ["epp", *args[i + 1:]]
        raise SystemExit(cli())
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    replica_args(ap)
    ap.add_argument("--off", choices=("flush", "hold"))
    a = ap.parse_args(args)
    if a.off:
        switch_off(a.off)
    _, cluster, trace, policy, clock, replicas, schedulers, view = replica_run(a)
    exchange = replicas.exchange(schedulers, clock)
    spans: dict[int, list[tuple[float, float, float, float, bool]]] = defaultdict(list)  # start, end, extra, heard, foreign
    streams: dict[int, list[tuple[float, float, int, float, float]]] = defaultdict(list)  # ft, end, tokens, extra, learned
    early = [0, 0]
    L = learn.EndpointLearner
    span, foreign, observe, prefill, decode = L._span, L.foreign_prefill, L._observe_stream, L.observe_prefill, L.observe_decode

    def foreign_prefill(self: Any, s: float, e: float, x: float) -> None:
        spans[id(self)].append((s, e, x, clock.now(), True))
        foreign(self, s, e, x)

    def own_span(self: Any, s: float, e: float, x: float) -> None:
        if not spans[id(self)] or spans[id(self)][-1][:3] != (s, e, x):
            spans[id(self)].append((s, e, x, clock.now(), False))
        span(self, s, e, x)

    def observe_stream(self: Any, stream: Any) -> None:
        ft, end = stream.first_token, stream.end
        streams[id(self)].append((ft, end, stream.completion, self._prefill_extra(ft, end), clock.now()))
        observe(self, stream)

    def count(kind: int, original: Any) -> Any:
        def counted(self: Any, x: Any, seconds: float) -> None:
            early[kind] += clock.now() < 10.0
            original(self, x, seconds)
        return counted

    L.foreign_prefill, L._span, L._observe_stream = foreign_prefill, own_span, observe_stream  # type: ignore[method-assign]
    L.observe_prefill, L.observe_decode = count(0, prefill), count(1, decode)  # type: ignore[method-assign]
    run = OfflineReplay(trace.requests, schedulers, cluster, clock, a.rate_scale, admission=policy.admission,
                        exchange=exchange).run()  # fmt: skip
    summary = summarize(run, policy.label, a.rate_scale, 0.0, 0.0, replicas=a.replicas, prefix_view=view)
    print(json.dumps({k: summary[k] for k in ("hit_ratio", "ttft_p50", "ttft_p90", "ttft_p99")}))
    print("observations learned in the first 10 s per replica: prefill", early[0] / a.replicas, "decode",
          early[1] / a.replicas)
    late = sorted(h - e for kept in spans.values() for _, e, _, h, f in kept if f)
    own = sorted(h - e for kept in spans.values() for _, e, _, h, f in kept if not f)
    print(f"peers' intervals: {len(late)}, heard after their end p50/p90/p99/max {_p(late)} {max(late, default=0):.3f} s")
    print(f"own intervals: {len(own)}, learned after their end p50/p90/p99 {_p(own)} s")
    missed_a = missed_b = used_total = full_total = 0.0
    missing = 0
    ratios: list[float] = []
    lags: list[float] = []
    for learner, ended in streams.items():
        kept: list[tuple[float, float, float]] = []
        for s, e, x in sorted((s, e, x) for s, e, x, _, _ in spans[learner]):
            if not kept or s >= kept[-1][1]:  # disjoint, as the learner keeps them
                kept.append((s, e, x))
        heard = {(s, e, x): h for s, e, x, h, _ in spans[learner]}
        for ft, end, _, used, learned in ended:
            lags.append(learned - end)
            full = late_a = late_b = 0.0
            for s, e, x in kept:
                if e <= ft or s >= end:
                    continue
                part = x * (min(e, end) - max(s, ft)) / (e - s)
                full += part
                if heard[(s, e, x)] > learned:
                    if e > end:
                        late_a += part
                    else:
                        late_b += part
            used_total, full_total, missed_a, missed_b = used_total + used, full_total + full, missed_a + late_a, missed_b + late_b
            missing += late_a + late_b > 0
            window = end - ft
            ratios.append(max(window - used, window / 20) / max(window - full, window / 20))
    ratios.sort()
    lags.sort()
    print(f"streams learned after their end p50/p90/p99 {_p(lags)} s")
    print(f"streams: {len(ratios)}, learned with a peer's interval missing {missing} ({missing / max(1, len(ratios)):.1%}); "
          f"prefill extra taken out {used_total:.1f} of {full_total:.1f} s, missed (a) {missed_a:.1f} s (b) {missed_b:.1f} s")
    print(f"inter-token time learned / with every interval p50/p90/p99 {_p(ratios)}, mean {sum(ratios) / max(1, len(ratios)):.3f}")


def _p(values: list[float]) -> str:
    return "/".join(f"{v:.3f}" if (v := percentile(values, q)) is not None else "-" for q in (50, 90, 99))


if __name__ == "__main__":
    main()
