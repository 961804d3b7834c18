"""``epp envoy-config`` prints a bootstrap that works: a real Envoy started from its output routes through a
real ``epp serve --static-endpoints`` (TLS on, its default) to the engine epp picked."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import yaml

from epp._util.proc import free_port
from epp.cli import build_parser, main
from epp.envoy.cli import config_from_args
from epp.envoy.process import EnvoyProcess
from tests.e2e.harness import Reply, Stack, chat, logged, post


def test_printed_config_routes_through_the_picker(
    stack: Stack, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    picker = stack.picker("tls")
    argv = ["envoy-config", "--static-endpoints", ",".join(u.hostport for u in stack.engines.upstreams),
            "--picker", picker.address.hostport, "--listen-address", "127.0.0.1",
            "--listen-port", str(free_port()), "--admin-port", str(free_port()),
            "--access-log", str(tmp_path / "access.log")]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert printed.startswith("# Envoy bootstrap for epp")
    config = config_from_args(build_parser().parse_args(argv))
    with EnvoyProcess(config, tmp_path, bootstrap=yaml.safe_load(printed)) as envoy:
        replies = asyncio.run(_send_four(envoy))
        entries = logged(envoy, [r.request_id for r in replies])
    for reply in replies:
        assert reply.status == 200, reply.body
        served = f"127.0.0.1:{reply.json()['engine']['port']}"
        assert entries[reply.request_id].destination == entries[reply.request_id].upstream == served


async def _send_four(envoy: EnvoyProcess) -> list[Reply]:
    return list(await asyncio.gather(*(post(envoy, chat(content=f"q{i}")) for i in range(4))))


def test_bad_values_are_reported_not_rendered(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["envoy-config", "--static-endpoints", "10.0.0.1"]) == 2
    assert capsys.readouterr().err == "epp envoy-config: static endpoint '10.0.0.1': expected HOST:PORT\n"
    assert main(["envoy-config", "--static-endpoints", "10.0.0.1:80", "--routing", "original-dst",
                 "--failure-mode-allow"]) == 2
    assert "--failure-mode-allow needs --routing override-host" in capsys.readouterr().err
