"""``epp serve`` as a real process with ``/metrics`` token auth, scraped over real HTTP, reviewing tokens
with the fake kube-apiserver (which also serves the pool it discovers)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from epp._util.proc import free_port, port_open, spawn, stop
from tests.conftest import wait_for
from tests.fakes.kube_apiserver import FakeKubeApiServer, make_pod, make_pool

READER_TOKEN = "scrape-tok-5b9e1d07c3"  # unique strings, searched for in the picker's log afterwards
OTHER_TOKEN = "other-tok-a41f88e2d6"
FRESH_TOKENS = ("fresh-tok-1c0de5", "fresh-tok-2f00d7")
READER = "system:serviceaccount:monitoring:prometheus"


@pytest.fixture
async def apiserver() -> AsyncIterator[FakeKubeApiServer]:
    server = FakeKubeApiServer()
    server.tokens = {READER_TOKEN: {"username": READER, "groups": ["system:serviceaccounts"]},
                     OTHER_TOKEN: {"username": "system:serviceaccount:llm:someone"}}
    server.grants = {READER: {("get", "/metrics")}}
    server.put(make_pool("pool", {"app": "vllm"}, [8000]))
    server.put(make_pod("a", "10.0.0.1"))
    async with server:
        yield server


class Picker:
    """One ``epp serve --pool-name pool`` process logging (at debug level) into ``log``."""

    def __init__(self, apiserver: FakeKubeApiServer, tmp_path: Path, *extra: str) -> None:
        self.metrics_port = free_port()
        self.log = tmp_path / "epp.log"
        kubeconfig = apiserver.write_kubeconfig(tmp_path / "kubeconfig")
        with self.log.open("wb") as out:
            self.proc = spawn(
                [sys.executable, "-m", "epp", "serve", "--pool-name", "pool", "--kubeconfig", str(kubeconfig),
                 "--secure-serving=false", "--bind-address", "127.0.0.1", "--grpc-port", str(free_port()),
                 "--grpc-health-port", str(free_port()), "--metrics-port", str(self.metrics_port),
                 "--drain-timeout", "0s", "--shutdown-grace", "1s", "-v", "9", *extra],
                stdout=out, stderr=subprocess.STDOUT,
            )

    async def ready(self) -> None:
        def up() -> bool:
            assert self.proc.poll() is None, self.log.read_text()
            return port_open("127.0.0.1", self.metrics_port)
        await wait_for(up, 60, "the metrics port")

    async def scrape(self, token: str | None = None) -> tuple[int, str]:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        async with aiohttp.ClientSession() as session, session.get(
            f"http://127.0.0.1:{self.metrics_port}/metrics", headers=headers
        ) as response:
            return response.status, await response.text()


async def test_scrapes_need_a_reviewed_and_authorized_token(apiserver: FakeKubeApiServer, tmp_path: Path) -> None:
    picker = Picker(apiserver, tmp_path)
    try:
        await picker.ready()
        assert (await picker.scrape())[0] == 401
        assert (await picker.scrape("not-a-known-token"))[0] == 401
        status, body = await picker.scrape(OTHER_TOKEN)
        assert (status, body.strip()) == (403, "Authorization denied for user system:serviceaccount:llm:someone")
        status, body = await picker.scrape(READER_TOKEN)
        assert status == 200 and "inference_pool_ready_pods" in body
        for _ in range(4):  # Prometheus scraping again: answered from the cache
            assert [(await picker.scrape(t))[0] for t in (READER_TOKEN, OTHER_TOKEN, "not-a-known-token")] == [
                200, 403, 401]
        assert apiserver.review_count("tokenreviews") == 3 and apiserver.review_count("subjectaccessreviews") == 2

        apiserver.review_failure = 500  # the API server fails the review: a clear 500, never a crash
        status, body = await picker.scrape(FRESH_TOKENS[0])
        assert (status, body.strip()) == (500, "Authentication failed")
        await apiserver.stop()  # the API server is gone: known scrapers still get in, new tokens get 500
        assert (await picker.scrape(READER_TOKEN))[0] == 200
        assert (await picker.scrape(FRESH_TOKENS[1]))[0] == 500
        assert picker.proc.poll() is None
    finally:
        code = stop(picker.proc)
    log = picker.log.read_text()
    assert code == 0, log
    assert f"metrics :{picker.metrics_port} (Kubernetes token auth)" in log
    assert "TokenReview failed, answering 500: kube-apiserver answered 500" in log
    assert "TokenReview failed, answering 500: kube-apiserver unreachable" in log
    for secret in (READER_TOKEN, OTHER_TOKEN, *FRESH_TOKENS, apiserver.token):
        assert secret not in log
    assert "DEBUG epp.metrics.auth: metrics auth: get /metrics denied for user" in log  # debug level was on


async def test_auth_off_leaves_metrics_open(apiserver: FakeKubeApiServer, tmp_path: Path) -> None:
    picker = Picker(apiserver, tmp_path, "--metrics-endpoint-auth=false")
    try:
        await picker.ready()
        status, body = await picker.scrape()
        assert status == 200 and "inference_pool_ready_pods" in body
    finally:
        assert stop(picker.proc) == 0
    assert apiserver.review_count("tokenreviews") == 0
    assert "(no auth)" in picker.log.read_text()


def test_auth_without_any_cluster_is_a_startup_error(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("KUBECONFIG", "KUBERNETES_SERVICE_HOST")}
    env["HOME"] = str(tmp_path)  # no ~/.kube/config either
    proc = subprocess.run(
        [sys.executable, "-m", "epp", "serve", "--static-endpoints", "127.0.0.1:1", "--metrics-endpoint-auth=true",
         "--secure-serving=false", "--bind-address", "127.0.0.1", "--grpc-port", "0", "--grpc-health-port", "0",
         "--metrics-port", "0"],
        capture_output=True, text=True, timeout=60, env=env,
    )
    assert proc.returncode == 2, proc.stderr
    assert "--metrics-endpoint-auth needs a kube-apiserver" in proc.stderr
    assert "--metrics-endpoint-auth=false" in proc.stderr and "Traceback" not in proc.stderr
