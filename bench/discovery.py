"""Kubernetes discovery benchmark: change-to-datastore latency, CPU and memory following a big pool.

A child process runs the fake kube-apiserver (tests/fakes/kube_apiserver.py) with ``--pods`` ready pods
and, once this process has synced, writes ``--rate`` pod changes per second for ``--duration`` seconds
(readiness flips, deletions, new pods — each one changes the endpoint set). This process runs only
epp's discovery (the real ``kubernetes_asyncio`` client, reflectors, datastore) and records when each
change reached the datastore through a datastore listener. Both sides stamp ``time.monotonic()``,
which on Linux is one system-wide clock, so cross-process latencies are comparable.

Also prints a side-by-side of decoding the same pod list the way epp does (orjson on the raw body)
against the generated client models (``ApiClient.deserialize`` → ``V1PodList``), the reason discovery
uses raw calls.

Run from the repository root::

    python bench/discovery.py --pods 1000 --rate 10 --duration 30
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import random
import resource
import statistics
import sys
import tempfile
import time
from multiprocessing.connection import Connection
from pathlib import Path
from types import SimpleNamespace

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import orjson  # noqa: E402

from epp.datastore import Datastore, Endpoint  # noqa: E402
from epp.discovery.kube_setup import KubernetesRuntime  # noqa: E402
from tests.fakes.kube_apiserver import FakeKubeApiServer, make_pod, make_pool  # noqa: E402

Change = tuple[str, str, float]  # pod, expected datastore op ("added"/"removed"), commit time


def _ip(i: int) -> str:
    return f"10.{i // 65536 % 256}.{i // 256 % 256}.{i % 256}"


async def _serve(conn: Connection, pods: int, rate: float, duration: float, seed: int) -> None:
    server = FakeKubeApiServer(bookmark_interval=5.0)
    server.put(make_pool("pool", {"app": "vllm"}, [8000]))
    for i in range(pods):
        server.put(make_pod(f"pod-{i}", _ip(i)))
    await server.start()
    conn.send(server.port)
    await asyncio.get_running_loop().run_in_executor(None, conn.recv)  # "go": the client has synced
    rng = random.Random(seed)
    ready = {f"pod-{i}": True for i in range(pods)}
    last_touched: dict[str, float] = {}
    changes: list[Change] = []
    start = time.monotonic()
    next_id = pods
    for n in range(int(rate * duration)):
        await asyncio.sleep(max(0.0, start + n / rate - time.monotonic()))
        now = time.monotonic()
        name = rng.choice([p for p in rng.sample(list(ready), 20) if now - last_touched.get(p, -9) > 2.0])
        roll = rng.random()
        if roll < 0.15 and ready[name]:
            server.delete(make_pod(name))
            del ready[name]
            changes.append((name, "removed", server.commit_times[server.rv]))
            continue
        if roll < 0.30:
            name, next_id = f"pod-{next_id}", next_id + 1
            ready[name] = False  # flipped to ready just below: a new pod, ready at once
        ready[name] = not ready[name]
        server.put(make_pod(name, _ip(int(name.split("-")[1])), ready=ready[name]))
        last_touched[name] = now
        changes.append((name, "added" if ready[name] else "removed", server.commit_times[server.rv]))
    await asyncio.sleep(1.0)
    conn.send(changes)
    await server.stop()


def _server_process(conn: Connection, pods: int, rate: float, duration: float, seed: int) -> None:
    asyncio.run(_serve(conn, pods, rate, duration, seed))


class _Arrivals:
    """Datastore listener stamping each membership change (what the prefix index and poller see)."""

    def __init__(self) -> None:
        self.events: dict[tuple[str, str], list[float]] = {}

    def _record(self, op: str, endpoint: Endpoint) -> None:
        pod = endpoint.name.rsplit("-rank-", 1)[0]
        self.events.setdefault((pod, op), []).append(time.monotonic())

    def endpoint_added(self, endpoint: Endpoint) -> None:
        self._record("added", endpoint)

    def endpoint_removed(self, endpoint: Endpoint) -> None:
        self._record("removed", endpoint)


def _rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _decode_comparison(pods: int) -> tuple[float, float]:
    from kubernetes_asyncio.client import ApiClient

    body = orjson.dumps({"kind": "PodList", "apiVersion": "v1", "metadata": {"resourceVersion": "1"},
                         "items": [make_pod(f"pod-{i}", _ip(i)) for i in range(pods)]})
    t0 = time.perf_counter()
    orjson.loads(body)
    raw = time.perf_counter() - t0

    async def typed() -> float:
        client = ApiClient()
        t1 = time.perf_counter()
        client.deserialize(SimpleNamespace(data=body.decode()), "V1PodList")
        elapsed = time.perf_counter() - t1
        await client.close()
        return elapsed

    return raw, asyncio.run(typed())


async def _follow(port_conn: Connection, kubeconfig: str, pods: int, duration: float) -> None:
    datastore = Datastore()
    arrivals = _Arrivals()
    datastore.add_listener(arrivals)
    rss_idle = _rss_mb()
    runtime = KubernetesRuntime(datastore, "default", pool_name="pool", kubeconfig=kubeconfig)
    t0 = time.monotonic()
    async with runtime:
        while not datastore.synced:
            await asyncio.sleep(0.005)
        sync_s = time.monotonic() - t0
        rss_synced = _rss_mb()
        cpu0, wall0 = _cpu(), time.monotonic()
        port_conn.send("go")
        loop = asyncio.get_running_loop()
        changes: list[Change] = await loop.run_in_executor(None, port_conn.recv)
        cpu_s, wall_s = _cpu() - cpu0, time.monotonic() - wall0
        rss_end = _rss_mb()
    latencies, missing = [], 0
    for pod, op, committed in changes:
        seen = [t for t in arrivals.events.get((pod, op), []) if t >= committed]
        if seen:
            latencies.append((min(seen) - committed) * 1000)
        else:
            missing += 1
    latencies.sort()
    p50 = statistics.median(latencies)
    p99 = latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))]
    print(f"pool: {pods} pods x 1 port; first sync {sync_s * 1000:.0f} ms; {len(datastore)} endpoints at end")
    print(f"changes: {len(changes)} in {duration:.0f} s; delivered {len(latencies)}, missing {missing}")
    print(f"latency ms: p50 {p50:.1f}  p99 {p99:.1f}  max {latencies[-1]:.1f}   target p99 <= 200 "
          f"-> ratio p99/target {p99 / 200:.3f}")
    print(f"cpu while following: {cpu_s:.2f} s over {wall_s:.1f} s = {100 * cpu_s / wall_s:.1f}% of one core")
    print(f"rss MB: idle {rss_idle:.1f}  after sync {rss_synced:.1f}  after churn {rss_end:.1f}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pods", type=int, default=1000)
    parser.add_argument("--rate", type=float, default=10.0, help="pod changes per second")
    parser.add_argument("--duration", type=float, default=30.0, help="seconds of churn")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()

    ctx = multiprocessing.get_context("spawn")
    here, there = ctx.Pipe()
    child = ctx.Process(target=_server_process, args=(there, args.pods, args.rate, args.duration, args.seed))
    child.start()
    try:
        port = here.recv()
        with tempfile.TemporaryDirectory() as tmp:
            server = FakeKubeApiServer()
            server.port = port
            kubeconfig = str(server.write_kubeconfig(Path(tmp) / "kubeconfig"))
            asyncio.run(_follow(here, kubeconfig, args.pods, args.duration))
    finally:
        child.join(timeout=15)
        if child.is_alive():
            child.kill()
            child.join()
    raw, typed = _decode_comparison(args.pods)  # last, so its allocations do not inflate the RSS above
    print(f"decode {args.pods}-pod list: orjson raw {raw * 1000:.1f} ms | client models {typed * 1000:.1f} ms "
          f"| ratio models/raw {typed / raw:.1f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
