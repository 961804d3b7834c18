"""epp side by side with the real peer routers, live, in front of the same ``epp sim`` engines.

Every router gets the same requests at the same (time-compressed) arrival times, through
``epp.replay.live.run_live_via``, in front of fresh engines (cold caches) each run:

- epp: Envoy + ``epp serve`` (``--config-file gie-default``, and no config = epp's ``default``);
- ``sglang-router`` and ``vllm-router`` from PyPI (the ``peers`` extra: ``pip install -e '.[peers]'``),
  each with ``--policy cache_aware`` and ``--policy round_robin``, their other flags at defaults.

Workloads: the head of the Mooncake conversation trace and a synthetic shared-prefix workload.
Prompts are sent as text to every router, because sglang-router's ``/v1/completions`` rejects token-id
prompts (HTTP 422) and both peers' cache-aware trees match on text: each trace token id becomes one
4-character printable word (an injective map over the ids the workload uses), which ``epp sim``'s
tokenizer (4 bytes per token) reads back as exactly one token, so prompt lengths and shared
prefixes are the trace's own.

Per router: completed, errors (non-200 or broken streams), hit ratio from the engines' own
``vllm:prefix_cache_{hits,queries}_total`` (delta over the run), TTFT p50/p90 measured by the client
on streamed requests, output throughput, and imbalance (max ÷ mean requests finished per engine,
from the engines' ``vllm:request_success_total``). Times are simulated seconds (wall ÷ time scale).
Every process is started on 127.0.0.1 and stopped by PID; runs are sequential (they share the CPU).

    python bench/peers.py [--requests 250] [--engines 4] [--time-scale 0.5] [--only NAME ...]
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from bisect import bisect_right
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from epp._util import proc as proc_util
from epp.demo.engines import EngineFleet
from epp.engine.config import EngineConfig
from epp.envoy.stack import LocalGateway
from epp.replay.live import Front, LiveSpec, run_live_via
from epp.replay.offline import ClusterSpec
from epp.replay.runner import trace_bounds
from epp.replay.summary import summarize
from epp.replay.synthetic import SharedPrefixParams, shared_prefix
from fetch_traces import TRACES_DIR, require  # bench/ is on sys.path when run as a script
from epp.replay.traces import Trace, read_trace
from epp.replay.traces.model import SegmentPrompt, TraceRequest

TRACES = TRACES_DIR  # python bench/fetch_traces.py
MOONCAKE = "mooncake_fast25_conversation_first30min.jsonl"
READY_TIMEOUT = 60.0
_ALPHABET = [chr(c) for c in range(0x21, 0x7F)]  # printable ASCII without space: 94 symbols
_PAIRS = [a + b for a in _ALPHABET for b in _ALPHABET]
_WORDS = len(_PAIRS) ** 2
_PREFIX = re.compile(rb"^vllm:prefix_cache_(hits|queries)_total\{[^}]*\} (\S+)$", re.MULTILINE)


class TextPrompts:
    """Renders each request's token ids as text, one 4-character word per token.

    The ids a workload uses are merged into disjoint ranges and numbered densely, so distinct ids get
    distinct words (at most 94⁴ ids) and runs of consecutive ids render without a lookup per token.
    Texts are rendered once, before any router runs, so every router gets the very same bytes.
    """

    def __init__(self, requests: Sequence[TraceRequest]) -> None:
        spans = sorted((start, start + n) for r in requests for start, n in _segments(r) if n)
        self._starts: list[int] = []
        self._dense: list[int] = []
        end = -1
        used = 0
        for start, stop in spans:
            if start >= end:  # a new disjoint range
                self._starts.append(start)
                self._dense.append(used)
            else:
                start = end
            if stop > start:
                used += stop - start
                end = stop
        if used > _WORDS:
            raise ValueError(f"workload uses {used:,} distinct token ids; text rendering covers {_WORDS:,}")
        self._texts = {id(r): self._render(r) for r in requests}

    def _render(self, request: TraceRequest) -> str:
        parts = []
        for start, n in _segments(request):
            i = bisect_right(self._starts, start) - 1
            first = self._dense[i] + start - self._starts[i]
            parts.append("".join(_PAIRS[k // len(_PAIRS)] + _PAIRS[k % len(_PAIRS)] for k in range(first, first + n)))
        return "".join(parts)

    def __call__(self, request: TraceRequest) -> str:
        return self._texts[id(request)]


def _segments(request: TraceRequest) -> Iterator[tuple[int, int]]:
    prompt = request.prompt
    if isinstance(prompt, SegmentPrompt):
        yield from prompt.segments
    else:
        yield from ((t, 1) for t in prompt.token_ids)


def prefix_counters(fleet: EngineFleet) -> tuple[float, float]:
    """(hit tokens, queried tokens) summed over the engines' ``/metrics``."""
    totals = {b"hits": 0.0, b"queries": 0.0}
    for upstream in fleet.upstreams:
        with urllib.request.urlopen(f"http://{upstream.hostport}/metrics", timeout=5) as reply:  # noqa: S310
            for name, value in _PREFIX.findall(reply.read()):
                totals[name] += float(value)
    return totals[b"hits"], totals[b"queries"]


@dataclass
class CacheProbe:
    """The engines' prefix-cache counters when the router became ready and when the replay ended."""

    before: tuple[float, float] = (0.0, 0.0)
    after: tuple[float, float] = (0.0, 0.0)

    @property
    def hit_ratio(self) -> float | None:
        queries = self.after[1] - self.before[1]
        return (self.after[0] - self.before[0]) / queries if queries else None


def _get_json(url: str) -> Any:
    try:
        with urllib.request.urlopen(url, timeout=2) as reply:  # noqa: S310
            return json.loads(reply.read())
    except (OSError, urllib.error.URLError, ValueError):
        return None


@contextmanager
def peer_router(
    script: Path, argv: Sequence[str], policy: str, fleet: EngineFleet, workdir: Path
) -> Iterator[str]:
    """A peer router process over the engines, once its ``/workers`` lists every engine healthy."""
    port, metrics_port = proc_util.free_port(), proc_util.free_port()
    args = [str(script), *argv, "--host", "127.0.0.1", "--port", str(port), "--policy", policy,
            "--prometheus-host", "127.0.0.1", "--prometheus-port", str(metrics_port),
            "--worker-urls", *(f"http://{u.hostport}" for u in fleet.upstreams)]  # fmt: skip
    workdir.mkdir(parents=True, exist_ok=True)
    with open(workdir / f"{script.name}-{policy}.log", "wb") as log:
        proc = proc_util.spawn(args, stdout=log, stderr=subprocess.STDOUT)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + READY_TIMEOUT
        while True:
            listing = _get_json(f"{url}/workers") or {}
            healthy = [w for w in listing.get("workers", []) if w.get("is_healthy")]
            if len(healthy) == len(fleet.upstreams):
                break
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{script.name} (pid {proc.pid}) did not register the engines; see {log.name}")
            time.sleep(0.1)
        yield url
    finally:
        proc_util.stop(proc)


@contextmanager
def epp_gateway(picker_args: Sequence[str], fleet: EngineFleet, workdir: Path) -> Iterator[str]:
    with LocalGateway(fleet.upstreams, workdir, picker_args=picker_args) as gateway:
        yield gateway.url


@dataclass(frozen=True)
class Router:
    name: str
    front: Callable[[EngineFleet, Path], Any] | None
    missing: str | None = None
    """Why this router cannot run here (then ``front`` is None)."""


def routers() -> list[Router]:
    out = [
        Router("epp gie-default (Envoy)", lambda f, w: epp_gateway(["--config-file", "gie-default"], f, w)),
        Router("epp default (Envoy)", lambda f, w: epp_gateway([], f, w)),
    ]
    bindir = Path(sys.executable).parent
    for script, argv in (("sglang-router", ["launch", "--log-level", "warn"]), ("vllm-router", ["--log-level", "warning"])):
        path = bindir / script
        found = path if path.exists() else (Path(p) if (p := shutil.which(script)) else None)
        for policy in ("cache_aware", "round_robin"):
            name = f"{script} {policy}"
            if found is None:
                out.append(Router(name, None, f"`{script}` not installed (pip install -e '.[peers]')"))
            else:
                out.append(Router(name, lambda f, w, s=found, a=argv, p=policy: peer_router(s, a, p, f, w)))
    return out


@dataclass
class Workload:
    label: str
    trace: Trace
    rate_scale: float
    time_scale: float
    prompts: TextPrompts = field(init=False)

    def __post_init__(self) -> None:
        self.prompts = TextPrompts(self.trace.requests)


def run_router(router: Router, workload: Workload, cluster: ClusterSpec, workdir: Path | None) -> dict[str, Any]:
    spec = LiveSpec(time_scale=workload.time_scale, workdir=workdir)
    probe = CacheProbe()
    assert router.front is not None

    @contextmanager
    def measured(fleet: EngineFleet, workdir: Path) -> Iterator[str]:
        with router.front(fleet, workdir / re.sub(r"\W+", "-", router.name).strip("-")) as url:  # type: ignore[misc]
            probe.before = prefix_counters(fleet)
            yield url
            probe.after = prefix_counters(fleet)

    front: Front = measured
    run = run_live_via(workload.trace.requests, front, cluster, workload.rate_scale, spec, prompt=workload.prompts)
    bounds = trace_bounds(workload.trace, cluster)
    summary = summarize(run, router.name, workload.rate_scale, bounds.ideal, bounds.capacity)
    errors = [r.shed for r in run.records if r.shed]
    return summary | {
        "engine_hit_ratio": probe.hit_ratio,
        "errors": len(errors),
        "first_error": errors[0] if errors else None,
        "per_engine": list(run.dispatched),
    }


def fmt(value: float | None, spec: str) -> str:
    return "–" if value is None else format(value, spec)


def table(workload: Workload, rows: list[dict[str, Any]], skipped: list[Router]) -> list[str]:
    trace = workload.trace
    first = rows[0] if rows else {}
    lines = [
        f"**{workload.label}**: {len(trace.requests)} requests over {trace.duration:.0f} s at ×1, rate ×{workload.rate_scale:g}, time scale {workload.time_scale:g}; "
        f"ideal hit ratio {fmt(first.get('ideal_hit_ratio'), '.1%')}, capacity bound {fmt(first.get('capacity_hit_ratio'), '.1%')}.",
        "",
        "| router | policy | completed | errors | hit (engines) | TTFT p50 s | TTFT p90 s | tok/s | imbalance | requests per engine | wall s |",
        "|---|---|--:|--:|--:|--:|--:|--:|--:|---|--:|",
    ]
    for s in rows:
        router, _, policy = s["policy"].partition(" ")
        lines.append(
            f"| {router} | {policy} | {s['completed']}/{s['requests']} | {s['errors']} | {fmt(s['engine_hit_ratio'], '.1%')} | "
            f"{fmt(s['ttft_p50'], '.3f')} | {fmt(s['ttft_p90'], '.3f')} | {fmt(s['throughput_tok_s'], ',.0f')} | "
            f"{fmt(s['imbalance'], '.2f')} | {' / '.join(map(str, s['per_engine']))} | {s['wall_s']:.1f} |"
        )
    lines += [f"| {r.name} | – | not run: {r.missing} | | | | | | | | |" for r in skipped]
    return lines + [""]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--traces", type=Path, default=TRACES)
    parser.add_argument("--requests", type=int, default=250, help="head of the Mooncake conversation trace")
    parser.add_argument("--rate-scale", type=float, default=1.0, help="Mooncake arrival-rate multiplier")
    parser.add_argument("--engines", type=int, default=4)
    parser.add_argument("--time-scale", type=float, default=0.5, help="Mooncake: wall seconds per simulated second")
    parser.add_argument(
        "--sp-time-scale", type=float, default=1.0,
        help="shared-prefix: wall seconds per simulated second (its TTFTs are ~10 ms, so router overhead ÷ scale shows)",
    )
    parser.add_argument("--budget", type=float, default=900.0, help="skip runs once this many wall seconds passed")
    parser.add_argument("--only", action="append", help="run only routers whose name contains this (repeatable)")
    parser.add_argument("--skip-mooncake", action="store_true", help="only the synthetic workload")
    parser.add_argument("--workdir", type=Path, default=None, help="keep the processes' logs here")
    parser.add_argument("--json", type=Path, default=None, help="also write every summary here")
    args = parser.parse_args()

    cluster = ClusterSpec(engines=args.engines, engine=EngineConfig(profile="llama-3.1-8b-h100"))
    sp = SharedPrefixParams(groups=16, prompts_per_group=12, system_len=2048, question_len=128, output_len=64, rate=8.0)
    workloads = [Workload("synthetic shared-prefix (16 groups × 12, 2048-token system prompts)", shared_prefix(sp, seed=0), 1.0, args.sp_time_scale)]
    if not args.skip_mooncake:
        trace = read_trace(require(args.traces / MOONCAKE), args.requests)
        workloads.insert(0, Workload(f"Mooncake conversation, first {args.requests}", trace, args.rate_scale, args.time_scale))
    chosen = [r for r in routers() if not args.only or any(o in r.name for o in args.only)]
    started = time.monotonic()
    out: list[str] = []
    raw: dict[str, list[dict[str, Any]]] = {}
    for workload in workloads:
        rows: list[dict[str, Any]] = []
        skipped = [r for r in chosen if r.front is None]
        for router in chosen:
            if router.front is None:
                continue
            if time.monotonic() - started > args.budget:
                skipped.append(Router(router.name, None, f"over the {args.budget:.0f} s budget"))
                continue
            try:
                rows.append(run_router(router, workload, cluster, args.workdir))
            except RuntimeError as exc:
                skipped.append(Router(router.name, None, str(exc)))
            print(f"{workload.label} / {router.name}: {time.monotonic() - started:.0f} s", file=sys.stderr, flush=True)
        out += table(workload, rows, skipped)
        raw[workload.label] = rows
    print(
        f"`python bench/peers.py --requests {args.requests} --rate-scale {args.rate_scale:g} --engines {args.engines} "
        f"--time-scale {args.time_scale:g} --sp-time-scale {args.sp_time_scale:g}`: {time.monotonic() - started:.0f} s wall.\n"
    )
    print("\n".join(out))
    if args.json:
        args.json.write_text(json.dumps(raw, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
