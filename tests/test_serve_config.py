"""``ServeConfig``: ``epp serve``'s flags become one frozen value, built once, and nothing below the
composition reads ``argparse`` again."""

from __future__ import annotations

import ast
import dataclasses
import pickle
from pathlib import Path

import pytest

import epp
import epp.app
import epp.service
from epp.app import run
from epp.cli import build_parser
from epp.serve_config import ServeConfig, ServeConfigError

EPP = Path(epp.__file__).parent
# Everything the composition (epp.app, epp.serve_config, epp.serve_flags) hands a ServeConfig section to.
BELOW_THE_COMPOSITION = ("service.py", "workers.py", "director.py", "discovery", "telemetry", "extproc")


def parse(*argv: str) -> ServeConfig:
    return ServeConfig.from_args(build_parser().parse_args(["serve", *argv]))


def _sections(value: object, path: str = "config") -> list[tuple[str, object]]:
    """``value`` and every dataclass nested in it, with its attribute path."""
    found = [(path, value)]
    for field in dataclasses.fields(value):  # type: ignore[arg-type]
        child = getattr(value, field.name)
        if dataclasses.is_dataclass(child):
            found += _sections(child, f"{path}.{field.name}")
    return found


def test_every_section_is_frozen() -> None:
    config = parse("--static-endpoints", "127.0.0.1:8000", "--pool-name", "p")
    sections = _sections(config)
    assert {path for path, _ in sections} >= {
        "config.serving", "config.metrics", "config.engine_metrics", "config.engine_metrics.target", "config.policy",
        "config.routing", "config.discovery", "config.discovery.kubernetes", "config.discovery.kubernetes.lease",
        "config.health", "config.logging",
    }
    for _, section in sections:
        first = dataclasses.fields(section)[0].name  # type: ignore[arg-type]
        with pytest.raises(dataclasses.FrozenInstanceError, match=first):
            setattr(section, first, getattr(section, first))
    assert config == parse("--static-endpoints", "127.0.0.1:8000", "--pool-name", "p")  # a value: same flags, equal


def test_flags_arrive_resolved() -> None:
    config = parse("--static-endpoints", "127.0.0.1:8000", "--disable-endpoint-subset-filter", "--fallback-endpoints=2",
                   "--grpc-server", "native", "--tls-cipher-suites", "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256",
                   "--total-queued-requests-metric", "q", "--pool-namespace", "ns")
    assert config.routing.subset_filter is False and config.routing.fallback_endpoints == 2
    assert config.serving.native and config.serving.tls_cipher_suites == ("ECDHE-RSA-AES128-GCM-SHA256",)
    assert [name for name, _ in config.engine_metrics.metric_names] == ["total_queued_requests_metric"]
    assert config.discovery.kubernetes.pool_namespace == "ns"
    assert config.metrics.auth is False  # auto, without Kubernetes discovery


@pytest.mark.parametrize(("argv", "message"), [
    (["--fallback-endpoints", "-1"], "--fallback-endpoints must not be negative"),
    (["--max-body-bytes", "0"], "--max-body-bytes and --max-concurrent-streams must be positive"),
    (["--workers", "2", "--ha-enable-leader-election"], "cannot be combined with --ha-enable-leader-election"),
    (["--kv-cache-usage-percentage-metric="], "--kv-cache-usage-percentage-metric must name a metric"),
    (["--endpoint-health-consecutive-failures", "0"], "--endpoint-health-consecutive-failures must be at least 1"),
])
def test_flag_errors_name_the_flag(argv: list[str], message: str) -> None:
    with pytest.raises(ValueError, match=message) as error:
        parse(*argv)
    assert isinstance(error.value, ServeConfigError) or "endpoint-health" in message


def test_run_builds_the_config_once_and_hands_that_value_down(monkeypatch: pytest.MonkeyPatch) -> None:
    built: list[ServeConfig] = []
    served: list[ServeConfig] = []
    from_args = ServeConfig.from_args.__func__  # type: ignore[attr-defined]

    def counting(cls: type[ServeConfig], args: object) -> ServeConfig:
        built.append(from_args(cls, args))
        return built[-1]

    async def serve(config: ServeConfig) -> int:
        served.append(config)
        return 0

    monkeypatch.setattr(epp.app, "configure_logging", lambda settings: None)  # keep pytest's logging
    monkeypatch.setattr(ServeConfig, "from_args", classmethod(counting))
    monkeypatch.setattr(epp.service, "serve", serve)
    assert run(build_parser().parse_args(["serve", "--static-endpoints", "127.0.0.1:8000"])) == 0
    assert len(built) == 1 and served == built and served[0] is built[0]


def test_a_worker_gets_its_parents_config_with_private_ports() -> None:
    parent = parse("--workers", "3", "--static-endpoints", "127.0.0.1:8000", "--metrics-endpoint-auth",
                   "--metrics-cert-dir", "/certs", "--grpc-health-port", "9003")
    worker = pickle.loads(pickle.dumps(parent.for_worker()))  # as it travels to ``python -m epp.workers``
    assert (worker.serving.workers, worker.serving.worker, worker.serving.grpc_health_port) == (1, True, 0)
    assert (worker.metrics.port, worker.metrics.auth, worker.metrics.cert_dir) == (0, False, "")
    assert dataclasses.replace(worker, serving=parent.serving, metrics=parent.metrics) == parent


def test_nothing_below_the_composition_reads_argparse() -> None:
    offenders = []
    for name in BELOW_THE_COMPOSITION:
        root = EPP / name
        for path in [root] if root.is_file() else sorted(root.rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text())):
                modules = ([a.name for a in node.names] if isinstance(node, ast.Import)
                           else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
                if "argparse" in modules:
                    offenders.append(str(path.relative_to(EPP)))
    assert offenders == []
