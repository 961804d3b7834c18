"""``/metrics`` token auth: the reviews, their caching and their failures, against the fake kube-apiserver
over real HTTP (in-process, virtual time for the cache windows)."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from epp._util.clock import VirtualClock
from epp.cli import build_parser
from epp.serve_config import ServeConfig
from epp.telemetry.auth import KubeMetricsAuth, TTLCache, Verdict, bearer_token
from tests.fakes.kube_apiserver import FakeKubeApiServer

READER = {"username": "system:serviceaccount:monitoring:prometheus", "uid": "u-1",
          "groups": ["system:serviceaccounts", "system:authenticated"]}
OTHER = {"username": "system:serviceaccount:llm:someone", "uid": "u-2", "groups": ["system:authenticated"]}


@pytest.fixture
async def apiserver() -> AsyncIterator[FakeKubeApiServer]:
    server = FakeKubeApiServer()
    server.tokens = {"reader-token": READER, "other-token": OTHER}
    server.grants = {READER["username"]: {("get", "/metrics")}}
    async with server:
        yield server


@pytest.fixture
async def auth(apiserver: FakeKubeApiServer, tmp_path: Path) -> AsyncIterator[tuple[KubeMetricsAuth, VirtualClock]]:
    clock = VirtualClock(1000.0)
    kubeconfig = str(apiserver.write_kubeconfig(tmp_path / "kubeconfig"))
    async with KubeMetricsAuth(kubeconfig, clock=clock) as checker:
        yield checker, clock


def reviews(apiserver: FakeKubeApiServer) -> tuple[int, int]:
    return apiserver.review_count("tokenreviews"), apiserver.review_count("subjectaccessreviews")


def test_bearer_token_parsing() -> None:
    assert bearer_token("Bearer abc") == "abc"
    assert bearer_token("bearer abc extra") == "abc"
    assert [bearer_token(h) for h in (None, "", "Bearer", "Bearer ", "Basic abc", "abc")] == [""] * 6


def test_ttl_cache_expires_and_stays_bounded() -> None:
    clock = VirtualClock()
    cache: TTLCache[str, int] = TTLCache(clock, max_entries=2)
    cache.put("a", 1, ttl=10)
    cache.put("b", 2, ttl=1)
    assert cache.get("a") == (True, 1)  # "a" is now the most recently used
    cache.put("c", 3, ttl=10)  # evicts "b", the least recently used
    assert (cache.get("b"), len(cache)) == ((False, None), 2)
    clock.advance(10)
    assert cache.get("a") == (False, None) and cache.get("c") == (False, None) and len(cache) == 0


async def test_verdicts(auth: tuple[KubeMetricsAuth, VirtualClock]) -> None:
    checker, _ = auth
    assert await checker.check(None, "GET", "/metrics") == Verdict(401, "Unauthorized")
    assert await checker.check("Bearer wrong", "GET", "/metrics") == Verdict(401, "Unauthorized")
    assert await checker.check("Bearer other-token", "GET", "/metrics") == Verdict(
        403, f"Authorization denied for user {OTHER['username']}")
    assert (await checker.check("Bearer reader-token", "GET", "/metrics")).status == 200
    assert (await checker.check("Bearer reader-token", "GET", "/other")).status == 403  # the path is part of the grant


async def test_group_grants_count(apiserver: FakeKubeApiServer, auth: tuple[KubeMetricsAuth, VirtualClock]) -> None:
    checker, _ = auth
    apiserver.grants = {"system:authenticated": {("get", "/metrics")}}
    assert (await checker.check("Bearer other-token", "GET", "/metrics")).status == 200


async def test_decisions_are_cached_for_the_reference_windows(
    apiserver: FakeKubeApiServer, auth: tuple[KubeMetricsAuth, VirtualClock]
) -> None:
    checker, clock = auth
    for _ in range(5):
        assert (await checker.check("Bearer reader-token", "GET", "/metrics")).status == 200
        assert (await checker.check("Bearer other-token", "GET", "/metrics")).status == 403
        assert (await checker.check("Bearer wrong", "GET", "/metrics")).status == 401
    assert reviews(apiserver) == (3, 2)
    clock.advance(31)  # denials expire after 30 s; tokens and grants are still known
    assert (await checker.check("Bearer other-token", "GET", "/metrics")).status == 403
    assert (await checker.check("Bearer reader-token", "GET", "/metrics")).status == 200
    assert reviews(apiserver) == (3, 3)
    clock.advance(30)  # 61 s: every token is reviewed again (revoked tokens stop working within a minute)
    apiserver.tokens.pop("reader-token")
    assert (await checker.check("Bearer reader-token", "GET", "/metrics")).status == 401
    assert (await checker.check("Bearer wrong", "GET", "/metrics")).status == 401
    assert reviews(apiserver) == (5, 3)


async def test_api_failures_answer_500_and_are_not_cached(
    apiserver: FakeKubeApiServer, auth: tuple[KubeMetricsAuth, VirtualClock], caplog: pytest.LogCaptureFixture
) -> None:
    checker, _ = auth
    apiserver.review_failure = 403  # the picker lacks the RBAC to create reviews
    with caplog.at_level(logging.ERROR, "epp.metrics.auth"):
        assert await checker.check("Bearer reader-token", "GET", "/metrics") == Verdict(500, "Authentication failed")
    assert "TokenReview failed" in caplog.text and "create on tokenreviews and subjectaccessreviews" in caplog.text
    apiserver.review_failure = None
    assert (await checker.check("Bearer reader-token", "GET", "/metrics")).status == 200  # asked again
    await apiserver.stop()  # unreachable: cached decisions still answer, new tokens get 500
    assert (await checker.check("Bearer reader-token", "GET", "/metrics")).status == 200
    caplog.clear()
    with caplog.at_level(logging.ERROR, "epp.metrics.auth"):
        assert (await checker.check("Bearer other-token", "GET", "/metrics")).status == 500
    assert "kube-apiserver unreachable" in caplog.text
    assert "other-token" not in caplog.text and "reader-token" not in caplog.text


@pytest.mark.parametrize(
    ("argv", "enabled"),
    [(["--pool-name", "p"], True), (["--endpoint-selector", "a=b"], True), (["--static-endpoints", "h:1"], False),
     (["--endpoints-file", "e.yaml"], False), (["--pool-name", "p", "--metrics-endpoint-auth=false"], False),
     (["--static-endpoints", "h:1", "--metrics-endpoint-auth"], True),
     (["--static-endpoints", "h:1", "--metrics-endpoint-auth=auto"], False)],
)
def test_default_follows_the_pool_source(argv: list[str], enabled: bool) -> None:
    assert ServeConfig.from_args(build_parser().parse_args(["serve", *argv])).metrics.auth is enabled
