"""``epp serve`` as users run it: flags, and a real subprocess drained by SIGTERM."""

from __future__ import annotations

import argparse
import asyncio
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as pb_grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from epp._util.cli import go_bool
from epp._util.proc import free_port, spawn
from epp.cli import build_parser
from tests.conftest import wait_for
from tests.extproc.builders import CHAT_BODY, request_body, request_headers, set_headers, streamed


def test_defaults_match_the_reference_flags() -> None:
    args = build_parser().parse_args(["serve"])
    assert (args.grpc_port, args.grpc_health_port, args.metrics_port) == (9002, 9003, 9090)
    assert args.secure_serving is True and args.enable_cert_reload is False
    assert (args.metrics_staleness_threshold, args.drain_timeout, args.max_body_bytes) == (2.0, 30.0, 16 * 2**20)
    assert args.verbosity == 2


@pytest.mark.parametrize(
    ("argv", "attr", "value"),
    [
        (["--secure-serving=false"], "secure_serving", False),
        (["--secure-serving"], "secure_serving", True),
        (["--disable-endpoint-subset-filter"], "disable_endpoint_subset_filter", True),
        (["--metrics-staleness-threshold", "500ms"], "metrics_staleness_threshold", 0.5),
        (["--drain-timeout=1m"], "drain_timeout", 60.0),
        (["-v", "4"], "verbosity", 4),
    ],
)
def test_go_style_flags(argv: list[str], attr: str, value: object) -> None:
    assert getattr(build_parser().parse_args(["serve", *argv]), attr) == value


@pytest.mark.parametrize("argv", [["--secure-serving=maybe"], ["--drain-timeout", "soon"], ["--grpc-port", "70000"]])
def test_bad_flag_values_are_usage_errors(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        build_parser().parse_args(["serve", *argv])
    assert info.value.code == 2


def test_go_bool_is_strconv_parse_bool() -> None:
    """Booleans as pflag parses them: Go's strconv.ParseBool spellings, nothing else."""
    ok = {"1": True, "t": True, "T": True, "TRUE": True, "true": True, "True": True,
          "0": False, "f": False, "F": False, "FALSE": False, "false": False, "False": False}
    assert {v: go_bool(v) for v in ok} == ok
    for bad in ("yes", "no", "tRuE", "", " true", "2"):
        with pytest.raises(argparse.ArgumentTypeError):
            go_bool(bad)


@pytest.mark.parametrize(
    ("extra", "message"),
    [([], "no endpoint source"), (["--static-endpoints", "10.0.0.1"], "expected HOST:PORT"),
     (["--static-endpoints", "10.0.0.1:0"], "port must be"),
     (["--endpoints-file", "/nonexistent/endpoints.yaml"], "/nonexistent/endpoints.yaml: cannot read"),
     (["--endpoints-file", "e.yaml", "--static-endpoints", "10.0.0.1:80"], "conflicting endpoint sources"),
     (["--max-concurrent-streams", "0", "--static-endpoints", "127.0.0.1:1"], "must be positive"),
     (["--endpoint-health-max-ejection-percent", "120", "--static-endpoints", "127.0.0.1:1"],
      "--endpoint-health-max-ejection-percent must be in [0, 100]"),
     (["--fallback-endpoints", "-1", "--static-endpoints", "127.0.0.1:1"], "--fallback-endpoints must not be negative")],
)
def test_serve_refuses_bad_configuration(extra: list[str], message: str) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "epp", "serve", "--secure-serving=false", "--grpc-port", str(free_port()),
         "--grpc-health-port", str(free_port()), "--metrics-port", str(free_port()), *extra],
        capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 2 and message in proc.stderr


@pytest.fixture
def serve_process() -> Iterator[tuple[subprocess.Popen[str], dict[str, int]]]:
    ports = {"grpc": free_port(), "health": free_port(), "metrics": free_port()}
    proc = spawn(
        [sys.executable, "-m", "epp", "serve", "--static-endpoints", "127.0.0.1:8001,127.0.0.1:8002",
         "--secure-serving=false", "--bind-address", "127.0.0.1", "--grpc-port", str(ports["grpc"]),
         "--grpc-health-port", str(ports["health"]), "--metrics-port", str(ports["metrics"]),
         "--drain-timeout", "10m", "--shutdown-grace", "60s"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        yield proc, ports
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=10)
        assert proc.stdout is not None
        if not proc.stdout.closed:
            print(proc.stdout.read())  # shown by pytest when the test failed
            proc.stdout.close()


async def health_is(stub: health_pb2_grpc.HealthStub, want: int, proc: subprocess.Popen[str]) -> bool:
    assert proc.poll() is None, "epp serve exited early"
    try:
        reply = await stub.Check(health_pb2.HealthCheckRequest(service="inference-extension"), timeout=5)
    except grpc.aio.AioRpcError:
        return False
    return bool(reply.status == want)


async def routes_get(channel: grpc.aio.Channel) -> bool:
    """Does a new body-less stream get a destination (True) or is it refused (False)?"""
    call = pb_grpc.ExternalProcessorStub(channel).Process(iter([request_headers("/x", eos=True, method="GET")]),
                                                           timeout=10)
    try:
        reply = await call.read()
    except grpc.aio.AioRpcError:
        return False
    return "x-gateway-destination-endpoint" in set_headers(reply.request_headers.response)


async def test_subprocess_drains_on_sigterm_serving_new_streams_then_finishing_open_ones(
    serve_process: tuple[subprocess.Popen[str], dict[str, int]],
) -> None:
    proc, ports = serve_process
    async with grpc.aio.insecure_channel(f"127.0.0.1:{ports['health']}") as hch, \
            grpc.aio.insecure_channel(f"127.0.0.1:{ports['grpc']}") as ch:
        health = health_pb2_grpc.HealthStub(hch)
        await wait_for(lambda: health_is(health, health_pb2.HealthCheckResponse.SERVING, proc), 30, "SERVING")
        metrics = await asyncio.to_thread(
            lambda: urllib.request.urlopen(f"http://127.0.0.1:{ports['metrics']}/metrics", timeout=10).read().decode()
        )
        assert 'inference_pool_ready_pods{name=""} 2.0' in metrics
        assert "inference_extension_info" in metrics

        call = pb_grpc.ExternalProcessorStub(ch).Process(timeout=60)
        await call.write(request_headers())  # in flight: the picker waits for the body
        await call.write(request_body(CHAT_BODY[:10]))
        proc.send_signal(signal.SIGTERM)
        await wait_for(lambda: health_is(health, health_pb2.HealthCheckResponse.NOT_SERVING, proc), 30, "NOT_SERVING")
        # Draining (--drain-timeout=10m): gateways still sending here are served, not refused.
        assert await routes_get(ch)
        assert proc.poll() is None
        proc.send_signal(signal.SIGTERM)  # a second signal ends the drain period: new streams are refused…

        async def refused() -> bool:
            return not await routes_get(ch)

        await wait_for(refused, 30, "new streams refused")
        assert proc.poll() is None  # …while the open stream still has its grace period

        await call.write(request_body(CHAT_BODY[10:], eos=True))
        head = await call.read()
        assert set_headers(head.request_headers.response)["x-gateway-destination-endpoint"] in {
            "127.0.0.1:8001", "127.0.0.1:8002",
        }
        assert streamed([await call.read()]) == (CHAT_BODY, [True])
        await call.done_writing()
        assert await call.read() == grpc.aio.EOF

    await wait_for(lambda: proc.poll() is not None, 30, "exit")
    assert proc.returncode == 0
    assert proc.stdout is not None
    log = proc.stdout.read()
    assert "shutting down" in log and "stopped" in log


def test_kubernetes_and_metrics_flags_are_accepted() -> None:
    args = build_parser().parse_args(["serve", "--pool-name=p", "--pool-namespace=ns", "--ha-enable-leader-election",
                                      "--refresh-metrics-interval=100ms"])
    assert (args.pool_name, args.pool_namespace, args.ha_enable_leader_election) == ("p", "ns", True)
    assert args.refresh_metrics_interval == 0.1


def test_static_and_kubernetes_sources_are_exclusive() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "epp", "serve", "--static-endpoints", "127.0.0.1:1", "--pool-name", "p"],
        capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 2 and "exactly one of" in proc.stderr


@pytest.mark.parametrize(
    ("extra", "message"),
    [(["--config-file", "no-such-preset-or-file"], "no-such-preset-or-file"),
     (["--config-text", "kind: NotAConfig"], "apiVersion")],
)
def test_serve_refuses_bad_scheduler_config(extra: list[str], message: str) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "epp", "serve", "--secure-serving=false", "--static-endpoints", "127.0.0.1:1",
         "--bind-address", "127.0.0.1", "--grpc-port", str(free_port()), "--grpc-health-port", str(free_port()),
         "--metrics-port", str(free_port()), *extra],
        capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 2 and message in proc.stderr


def test_unusable_kubeconfig_is_a_clear_error_not_a_traceback(tmp_path: Path) -> None:
    broken = tmp_path / "broken.yaml"
    broken.write_text("clusters: [")
    for path in ("/nonexistent/kubeconfig", str(broken)):
        proc = subprocess.run(
            [sys.executable, "-m", "epp", "serve", "--secure-serving=false", "--pool-name", "p", "--kubeconfig", path,
             "--bind-address", "127.0.0.1", "--grpc-port", "0", "--grpc-health-port", "0", "--metrics-port", "0"],
            capture_output=True, text=True, timeout=60,
        )
        assert proc.returncode == 2, proc.stderr
        assert f"kubeconfig {path}" in proc.stderr and "Traceback" not in proc.stderr


def test_flags_only_means_serve() -> None:
    """Upstream charts set ``args:`` to flags only, replacing the image's ``CMD ["serve"]``."""
    from epp.cli import with_default_command

    argv = with_default_command(["--pool-name=p", "--grpc-port=9002"])
    args = build_parser().parse_args(argv)
    assert (args.command, args.pool_name, args.grpc_port) == ("serve", "p", 9002)
    assert with_default_command(["--version"]) == ["--version"]
    assert with_default_command(["bbr", "--grpc-port=1"]) == ["bbr", "--grpc-port=1"]


def test_flags_only_process_runs_serve() -> None:
    proc = subprocess.run([sys.executable, "-m", "epp", "--static-endpoints", "127.0.0.1:1", "--pool-name", "p"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "exactly one of" in proc.stderr  # serve's own check, not a usage error


def test_reference_flags_are_accepted_and_unsupported_ones_named() -> None:
    from epp.app import warn_unsupported
    from epp.cli import build_parser

    args = build_parser().parse_args([
        "serve", "--static-endpoints", "127.0.0.1:1", "--tracing=false", "--enable-pprof", "--metrics-endpoint-auth=false",
        "--refresh-prometheus-metrics-interval", "5s", "--grpc-max-recv-msg-size", "4194304",
    ])
    assert warn_unsupported(args) == ["enable_pprof"]


async def test_second_ctrl_c_stops_at_once_cancelling_open_streams(
    serve_process: tuple[subprocess.Popen[str], dict[str, int]],
) -> None:
    proc, ports = serve_process
    async with grpc.aio.insecure_channel(f"127.0.0.1:{ports['health']}") as hch, \
            grpc.aio.insecure_channel(f"127.0.0.1:{ports['grpc']}") as ch:
        health = health_pb2_grpc.HealthStub(hch)
        await wait_for(lambda: health_is(health, health_pb2.HealthCheckResponse.SERVING, proc), 30, "SERVING")
        call = pb_grpc.ExternalProcessorStub(ch).Process(timeout=60)
        await call.write(request_headers())  # open: the picker waits for the body (10m drain, 60s grace)
        proc.send_signal(signal.SIGINT)
        await wait_for(lambda: health_is(health, health_pb2.HealthCheckResponse.NOT_SERVING, proc), 30, "NOT_SERVING")
        stopped_at = time.monotonic()
        proc.send_signal(signal.SIGINT)
        await wait_for(lambda: proc.poll() is not None, 15, "exit after the second Ctrl-C")
        assert time.monotonic() - stopped_at < 15  # neither the 10 min drain nor the 60 s grace
        with pytest.raises(grpc.aio.AioRpcError):
            await call.read()
    assert proc.returncode == 0
    assert proc.stdout is not None
    log = proc.stdout.read()
    assert "press Ctrl-C again to stop now" in log and "second Ctrl-C: stopping now" in log
    assert "Traceback" not in log


def test_a_second_picker_on_a_busy_grpc_port_fails_instead_of_sharing_it(
    serve_process: tuple[subprocess.Popen[str], dict[str, int]],
) -> None:
    first, ports = serve_process
    wait_until = time.monotonic() + 30
    while not _listening(ports["grpc"]):
        assert first.poll() is None and time.monotonic() < wait_until, "the first epp serve did not start"
        time.sleep(0.1)
    second = subprocess.run(
        [sys.executable, "-m", "epp", "serve", "--static-endpoints", "127.0.0.1:8001", "--secure-serving=false",
         "--bind-address", "127.0.0.1", "--grpc-port", str(ports["grpc"]), "--grpc-health-port", str(free_port()),
         "--metrics-port", str(free_port())],
        capture_output=True, text=True, timeout=60,
    )
    assert second.returncode == 1, second.stderr
    assert f"cannot listen on 127.0.0.1:{ports['grpc']} for ext_proc: the port is in use" in second.stderr
    assert first.poll() is None


def _listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0
