"""``epp serve --workers N``: the merged metrics, the port guarantee, and the real parent with its workers."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import urllib.request

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client import CollectorRegistry, generate_latest

from epp._util.proc import spawn
from epp.workers import _Merged, check_port_free, merge_metrics
from tests.conftest import wait_for
from tests.test_app import free_port, routes_get

WORKER_TEXT = """\
# HELP inference_objective_request_total Requests.
# TYPE inference_objective_request_total counter
inference_objective_request_total{{model_name="m",target_model_name="m"}} {requests}
# HELP epp_extproc_streams Streams open.
# TYPE epp_extproc_streams gauge
epp_extproc_streams {streams}
# HELP inference_pool_ready_pods Ready pods.
# TYPE inference_pool_ready_pods gauge
inference_pool_ready_pods{{name="p"}} {pods}
# HELP epp_kv_events_connected Connected.
# TYPE epp_kv_events_connected gauge
epp_kv_events_connected {connected}
# HELP inference_objective_request_duration_seconds Duration.
# TYPE inference_objective_request_duration_seconds histogram
inference_objective_request_duration_seconds_bucket{{le="1.0"}} {requests}
inference_objective_request_duration_seconds_bucket{{le="+Inf"}} {requests}
inference_objective_request_duration_seconds_count {requests}
inference_objective_request_duration_seconds_sum 0.5
"""


def test_merged_metrics_sum_counters_histograms_and_per_worker_gauges_but_not_pool_gauges() -> None:
    texts = [WORKER_TEXT.format(requests=3, streams=2, pods=4, connected=1),
             WORKER_TEXT.format(requests=5, streams=1, pods=3, connected=0)]
    merged = _Merged()
    merged.families = merge_metrics(texts)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(merged)  # type: ignore[arg-type]
    text = generate_latest(registry).decode()
    assert 'inference_objective_request_total{model_name="m",target_model_name="m"} 8.0' in text
    assert "# TYPE inference_objective_request_total counter" in text  # GIE names and types unchanged
    assert "epp_extproc_streams 3.0" in text  # each worker's own streams: the pod has their sum
    assert 'inference_pool_ready_pods{name="p"} 4.0' in text  # every worker sees the same pool: not 7
    assert "epp_kv_events_connected 0.0" in text  # one disconnected worker: the pod is not connected
    assert 'inference_objective_request_duration_seconds_bucket{le="1.0"} 8.0' in text
    assert "inference_objective_request_duration_seconds_sum 1.0" in text


def test_the_port_check_refuses_a_busy_port_and_then_holds_the_port_against_plain_binds() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        with pytest.raises(OSError, match="the port is in use"):
            check_port_free("127.0.0.1", busy.getsockname()[1])
    holder = check_port_free("127.0.0.1", 0)
    port = holder.getsockname()[1]
    with holder, socket.socket() as other, pytest.raises(OSError):
        other.bind(("127.0.0.1", port))  # another epp (no SO_REUSEPORT) cannot slip in between the workers
    with socket.socket() as probe:  # and a listening worker-like socket is the only one that gets connections
        assert probe.connect_ex(("127.0.0.1", port)) != 0


def _health(port: int) -> int:
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        try:
            return int(health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service="inference-extension"), timeout=2).status)
        except grpc.RpcError:
            return -1


def _metric(port: int, name: str) -> float | None:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    match = re.search(rf"^{name} (\S+)$", text, re.MULTILINE)
    return float(match.group(1)) if match else None


def _worker_pids(log_path: str) -> dict[int, int]:
    with open(log_path) as log:
        return {int(i): int(pid) for i, pid in re.findall(r"worker (\d+) \(pid (\d+)\) serving", log.read())}


async def test_workers_share_the_port_aggregate_health_and_metrics_restart_and_drain(tmp_path) -> None:
    ports = {"grpc": free_port(), "health": free_port(), "metrics": free_port()}
    log_path = str(tmp_path / "serve.log")
    command = [sys.executable, "-m", "epp", "serve", "--static-endpoints", "127.0.0.1:8001,127.0.0.1:8002",
               "--secure-serving=false", "--bind-address", "127.0.0.1", "--grpc-port", str(ports["grpc"]),
               "--grpc-health-port", str(ports["health"]), "--metrics-port", str(ports["metrics"]),
               "--drain-timeout", "1s", "--max-concurrent-streams", "100"]
    with open(log_path, "w") as log:
        proc = spawn([*command, "--workers", "2"], stdout=log, stderr=subprocess.STDOUT)
    serving = health_pb2.HealthCheckResponse.SERVING
    try:
        await wait_for(lambda: proc.poll() is None and len(_worker_pids(log_path)) == 2, 120, "two workers")
        await wait_for(lambda: _health(ports["health"]) == serving, 30, "pod SERVING")
        assert _metric(ports["metrics"], "epp_extproc_streams_limit") == 200  # both workers' limits
        async with grpc.aio.insecure_channel(f"127.0.0.1:{ports['grpc']}") as channel:
            for _ in range(4):  # new connections, spread by the kernel: every one is served
                assert await routes_get(channel)

        second = subprocess.run([*command[:-4], "--workers", "2"], capture_output=True, text=True, timeout=60)
        assert second.returncode == 1 and "the port is in use" in second.stderr  # the guarantee holds

        killed = _worker_pids(log_path)[0]
        os.kill(killed, signal.SIGKILL)
        await wait_for(lambda: _worker_pids(log_path).get(0) not in (None, killed), 120, "worker 0 restarted")
        with open(log_path) as log:
            assert f"worker 0 (pid {killed}) exited with -9; restarting it" in log.read()
        await wait_for(lambda: _health(ports["health"]) == serving, 30, "pod SERVING again")

        pids = _worker_pids(log_path).values()
        proc.send_signal(signal.SIGTERM)
        await wait_for(lambda: proc.poll() is not None, 60, "exit")
        assert proc.returncode == 0
        for pid in pids:
            with pytest.raises(ProcessLookupError):
                os.kill(pid, 0)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
    with open(log_path) as log:
        text = log.read()
    assert "Traceback" not in text and "Fatal Python error" not in text, text


def test_a_configuration_error_in_the_workers_ends_the_pod_with_exit_2(tmp_path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "epp", "serve", "--workers", "2", "--static-endpoints", "127.0.0.1:8001",
         "--secure-serving=false", "--bind-address", "127.0.0.1", "--grpc-port", str(free_port()),
         "--grpc-health-port", str(free_port()), "--metrics-port", str(free_port()),
         "--config-file", str(tmp_path / "missing.yaml")],
        capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 2, done.stderr
    assert "exited with 2 at start-up: stopping the pod" in done.stderr


def test_workers_refuse_leader_election() -> None:
    done = subprocess.run([sys.executable, "-m", "epp", "serve", "--workers", "2", "--ha-enable-leader-election",
                           "--static-endpoints", "127.0.0.1:8001"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "cannot be combined with --ha-enable-leader-election" in done.stderr
