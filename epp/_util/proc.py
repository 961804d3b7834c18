"""Child-process helpers for the local stacks (demo, e2e tests, benchmarks): spawning children that die
with us, free ports, ready lines, stop by PID."""

from __future__ import annotations

import errno
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

_PR_SET_PDEATHSIG = 1


def spawn(args: Sequence[str], **popen: Any) -> subprocess.Popen[Any]:
    """``Popen`` whose child gets SIGTERM when the spawning thread dies (Linux ``PR_SET_PDEATHSIG``).

    Without it a SIGKILLed test run or demo leaves ``epp serve``/``epp sim`` children listening forever.
    The signal follows the *thread* that called ``spawn``: call it from a long-lived thread (the main
    one), never from a short-lived worker. Elsewhere than Linux this is a plain ``Popen``.

    The death signal is set by a tiny Python trampoline that then execs ``args`` (the setting survives
    ``execve``), not by ``preexec_fn``: that runs Python between ``fork`` and ``exec`` in a copy of a
    multi-threaded parent, and a parent running gRPC (its event-engine threads and fork handlers) made
    such children die at birth now and then ("epoll_wait error: Bad file descriptor").
    """
    if os.uname().sysname == "Linux":
        env = popen.get("env")
        program = shutil.which(args[0], path=None if env is None else env.get("PATH", os.defpath))
        if program is None:  # as Popen would say, not from the child after the trampoline started
            raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), args[0])
        args = [sys.executable, "-S", "-c", _TRAMPOLINE, str(os.getpid()), program, *args[1:]]
    return subprocess.Popen(args, **popen)


_TRAMPOLINE = (
    "import ctypes, os, signal, sys\n"
    f"ctypes.CDLL(None, use_errno=True).prctl({_PR_SET_PDEATHSIG}, signal.SIGTERM, 0, 0, 0)\n"
    "if os.getppid() != int(sys.argv[1]):\n"
    "    sys.exit(128 + signal.SIGTERM)  # the parent died before prctl: nobody would signal us\n"
    "os.execv(sys.argv[2], sys.argv[2:])\n"
)


_HANDED_OUT: set[int] = set()
"""Ports ``free_port`` has returned in this process: a port picked and released can come back from the
OS on the next call, before the first caller's child has bound it (an Envoy admin port that a picker then
took: the admin poll read the picker's HTTP/2 frames)."""


def free_port(host: str = "127.0.0.1") -> int:
    """A port nobody listens on right now and not handed out before by this process (the OS picks it; a
    small race with other processes remains until the user binds it)."""
    for _ in range(64):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind((host, 0))
            port = int(sock.getsockname()[1])
        if port not in _HANDED_OUT:
            break
    else:
        _HANDED_OUT.clear()  # most of the ephemeral range handed out: the oldest children bound theirs long ago
    _HANDED_OUT.add(port)
    return port


def port_open(host: str, port: int, timeout: float = 0.2) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def read_line(proc: subprocess.Popen[bytes], timeout: float) -> bytes:
    """The child's next stdout line, waiting at most ``timeout`` s; raises if it exits or stays silent."""
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    buffer = b""
    while not buffer.endswith(b"\n"):
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError(f"pid {proc.pid} printed no line within {timeout:.0f}s")
        readable, _, _ = select.select([proc.stdout], [], [], min(remaining, 0.2))
        if readable:
            chunk = proc.stdout.read1(4096)  # type: ignore[attr-defined]
            if not chunk:
                raise RuntimeError(f"pid {proc.pid} exited (code {proc.wait()}) before it was ready")
            buffer += chunk
    return buffer


def stop(proc: subprocess.Popen[bytes], grace: float = 5.0) -> int:
    """SIGTERM, then SIGKILL after ``grace`` seconds; returns the exit code. Only this PID is signalled."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=grace)
    for stream in (proc.stdout, proc.stderr):
        if stream is not None:
            stream.close()
    return proc.returncode


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds used by ``pid`` so far, from ``/proc/PID/stat`` (Linux only)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime, in clock ticks


def tree_cpu_seconds(pid: int) -> float:
    """``cpu_seconds`` of ``pid`` plus its live children's (``epp serve --workers N``: the parent and its
    workers; a child that exited in between is not counted, so measure with no restarts)."""
    total = cpu_seconds(pid)
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if int(fields[1]) == pid:  # field 4 of stat: the parent's pid
                total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        except (OSError, IndexError, ValueError):
            continue  # gone while we looked
    return total
