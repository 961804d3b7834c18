"""Integration through a real Envoy: plugin response headers reach clients, endpoints-file edits move traffic."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from epp.envoy.picker import PickerProcess
from epp.envoy.process import EnvoyProcess
from epp.envoy.stack import local_config
from tests.e2e.harness import Stack, chat, logged, post


async def test_session_token_keeps_a_conversation_on_its_engine(stack: Stack) -> None:
    envoy = stack.envoy("session-affinity")
    first = await post(envoy, chat(content="turn 1"))
    assert first.status == 200, first.body
    token = first.headers["x-session-token"]  # set by session-affinity-scorer in the response-headers phase
    engine = first.json()["engine"]["name"]
    followups = [await post(envoy, chat(content=f"turn {i}"), headers={"x-session-token": token}) for i in range(2, 8)]
    assert {r.json()["engine"]["name"] for r in followups} == {engine}
    assert {r.headers["x-session-token"] for r in followups} == {token}
    # Without a token every endpoint scores 0 and the picker breaks the tie at random: sessions pin, nothing else does.
    strangers = [await post(envoy, chat(content=f"stranger {i}")) for i in range(12)]
    assert len({r.json()["engine"]["name"] for r in strangers}) > 1


def write_endpoints(path: Path, stack: Stack, names: list[str]) -> None:
    members = stack.engines.members
    doc = {"endpoints": [{"name": n, "address": members[n].host, "port": str(members[n].port)} for n in names]}
    tmp = path.with_suffix(".tmp")
    tmp.write_text(yaml.safe_dump(doc))
    tmp.replace(path)  # atomic: the watcher never reads half a file


@pytest.fixture
def file_gateway(stack: Stack, tmp_path: Path) -> Iterator[tuple[Path, EnvoyProcess]]:
    """``epp serve --endpoints-file … --endpoints-file-watch`` (engine a only) behind its own Envoy."""
    path = tmp_path / "endpoints.yaml"
    write_endpoints(path, stack, ["a"])
    picker = PickerProcess((), extra_args=["--endpoints-file", str(path), "--endpoints-file-watch"],
                           log_path=tmp_path / "epp.log")
    envoy = EnvoyProcess(local_config(picker.address, stack.engines.upstreams, tmp_path), tmp_path)
    picker.start()
    try:
        envoy.start()
        yield path, envoy
    finally:
        envoy.stop()
        picker.stop()


async def test_editing_the_endpoints_file_moves_traffic(stack: Stack, file_gateway: tuple[Path, EnvoyProcess]) -> None:
    path, envoy = file_gateway
    before = await asyncio.gather(*(post(envoy, chat(content=f"q{i}")) for i in range(4)))
    assert {r.json()["engine"]["name"] for r in before} == {"a"}

    write_endpoints(path, stack, ["b", "c"])
    for _ in range(100):  # the watcher polls once a second; bounded at ~20 s
        reply = await post(envoy, chat())
        if reply.json()["engine"]["name"] != "a":
            break
        await asyncio.sleep(0.2)
    after = await asyncio.gather(*(post(envoy, chat(content=f"r{i}")) for i in range(6)))
    assert {r.json()["engine"]["name"] for r in after} <= {"b", "c"}
    entries = logged(envoy, [r.request_id for r in after])
    assert {entries[r.request_id].upstream for r in after} <= {stack.engines.members[n].hostport for n in ("b", "c")}
