"""Children started with ``spawn`` do not outlive a parent that is SIGKILLed; ``free_port`` never hands
one process the same port twice."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace, TracebackType

import pytest

from epp._util import proc
from epp._util.proc import read_line, spawn, stop
from tests.conftest import wait_for

PARENT = """
import sys, time
from epp._util.proc import spawn
child = spawn([sys.executable, "-c", "import time; time.sleep(120)"])
print(child.pid, flush=True)
time.sleep(120)
"""


def gone(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return True
    return state in ("Z", "X")  # exited; its new parent may not have reaped it yet


async def test_child_dies_when_its_parent_is_killed() -> None:
    parent = subprocess.Popen([sys.executable, "-c", PARENT], stdout=subprocess.PIPE)
    child = 0
    try:
        child = int(read_line(parent, timeout=30))
        assert not gone(child)
        parent.send_signal(signal.SIGKILL)
        parent.wait(timeout=10)
        await wait_for(lambda: gone(child), 10, "the orphaned child to exit")
    finally:
        stop(parent)
        if child and not gone(child):
            os.kill(child, signal.SIGKILL)


def test_spawn_is_a_popen() -> None:
    proc = spawn([sys.executable, "-c", "print('hi')"], stdout=subprocess.PIPE)
    out, _ = proc.communicate(timeout=30)
    assert out == b"hi\n" and proc.returncode == 0


def test_the_spawned_pid_is_the_program_itself_and_a_missing_program_raises_at_once(tmp_path: Path) -> None:
    proc = spawn([sys.executable, "-c", "import os; print(os.getpid())"], stdout=subprocess.PIPE)
    out, _ = proc.communicate(timeout=30)
    assert int(out) == proc.pid  # the trampoline exec'd it: stop(proc) signals the program, not a wrapper
    missing = str(tmp_path / "no-such-program")
    try:
        spawn([missing])
    except FileNotFoundError as err:
        assert err.filename == missing
    else:
        raise AssertionError("spawn of a missing program did not raise")


class _OsPorts:
    """A socket whose OS-picked port comes from a fixed sequence: the same port twice in a row, as Linux
    may give it once it is released."""

    def __init__(self, ports: Iterator[int]) -> None:
        self.ports = ports
        self.port = 0

    def __call__(self, *_: object) -> _OsPorts:
        return self

    def __enter__(self) -> _OsPorts:
        return self

    def __exit__(self, *_: type[BaseException] | BaseException | TracebackType | None) -> None:
        return None

    def bind(self, _: tuple[str, int]) -> None:
        self.port = next(self.ports)

    def getsockname(self) -> tuple[str, int]:
        return ("127.0.0.1", self.port)


def test_free_port_does_not_hand_out_a_port_again_that_the_os_gives_twice(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(proc, "_HANDED_OUT", set())
    os_sockets = SimpleNamespace(AF_INET=socket.AF_INET, SOCK_STREAM=socket.SOCK_STREAM,
                                 socket=_OsPorts(iter([40001, 40001, 40001, 40002])))
    monkeypatch.setattr(proc, "socket", os_sockets)  # this module's view only, not the socket module
    assert proc.free_port() == 40001
    assert proc.free_port() == 40002  # a picker and an Envoy admin port would both have had 40001
