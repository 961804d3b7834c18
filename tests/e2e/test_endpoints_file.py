"""``epp serve --endpoints-file``: membership from a watched file, changed while Envoy routes through epp."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from epp.envoy.config import Upstream
from epp.envoy.picker import PickerProcess
from epp.envoy.process import EnvoyProcess
from epp.envoy.stack import local_config
from tests.e2e.harness import Stack, chat, post


def write_members(path: Path, members: dict[str, Upstream]) -> None:
    """Replace the file atomically (as editors and ConfigMap updates do)."""
    lines = ["endpoints:"] + [
        f"  - {{name: {name}, address: \"{up.host}\", port: \"{up.port}\"}}" for name, up in members.items()
    ]
    tmp = path.with_suffix(".tmp")
    tmp.write_text("\n".join(lines) + "\n")
    os.replace(tmp, path)


@pytest.fixture(scope="module")
def members_file(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, EnvoyProcess]]:
    workdir = tmp_path_factory.mktemp("endpoints-file")
    path = workdir / "endpoints.yaml"
    write_members(path, {"a": stack.engines.members["a"]})
    picker = PickerProcess((), endpoints_file=path, log_path=workdir / "epp.log")
    envoy = EnvoyProcess(local_config(picker.address, stack.engines.upstreams, workdir), workdir)
    picker.start()
    try:
        envoy.start()
        try:
            yield path, envoy
        finally:
            envoy.stop()
    finally:
        picker.stop()


async def served_by(envoy: EnvoyProcess) -> str:
    reply = await post(envoy, chat())
    assert reply.status == 200, reply.body
    return str(reply.json()["engine"]["name"])


async def test_membership_follows_the_file_and_a_bad_edit_keeps_the_pool(
    stack: Stack, members_file: tuple[Path, EnvoyProcess]
) -> None:
    path, envoy = members_file
    assert {await served_by(envoy) for _ in range(6)} == {"a"}
    write_members(path, {"b": stack.engines.members["b"], "c": stack.engines.members["c"]})
    for _ in range(100):  # the watcher polls once a second
        if await served_by(envoy) != "a":
            break
        await asyncio.sleep(0.1)
    assert {await served_by(envoy) for _ in range(10)} <= {"b", "c"}
    path.write_text("endpoints: [not, a, list, of, endpoints")  # a typo must not empty the pool
    await asyncio.sleep(1.5)
    assert {await served_by(envoy) for _ in range(6)} <= {"b", "c"}
