"""``bench/corpus.py --route``: every loadable real upstream config routes a chat and a completion request
through a real Envoy → ``epp serve --config-file <config>`` → ``epp sim`` engines.

The engines start once: an aggregated pair and a prefill/decode pair (role labels from an endpoints file,
as tests/e2e/test_disagg.py does). One Envoy fronts all four and keeps running; per config only ``epp serve``
is (re)started on the same gRPC port, over the pair the config needs (``needs_roles``). A file-discovery
config is pointed at the run's endpoints file; alpha plugins are loaded (``--allow-experimental-plugins``),
as a deployment of those configs must. A pass: both requests answer 200, each served (Envoy's access log) by
an engine of the config's pair. Every process is stopped by PID.
"""

from __future__ import annotations

import asyncio
import contextlib
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

from epp._util.proc import free_port
from epp.demo.engines import EngineFleet, start_engines
from epp.discovery.sources import MULTICLUSTER_FILE_DISCOVERY
from epp.envoy.config import Upstream
from epp.envoy.picker import PickerProcess
from epp.envoy.process import EnvoyProcess
from epp.envoy.stack import local_config
from epp.scheduling.plugins.filters.header_based_testing import HEADER_BASED_TESTING_FILTER, SELECTION_HEADER
from epp.scheduling.plugins.profiles.disagg import DATA_PARALLEL_PROFILE_HANDLER
from tests.e2e.harness import Reply, chat, logged, post

MODEL = "meta-llama/Llama-3.1-8B-Instruct"
SIM_ARGS = ("--time-scale", "0")
PICKER_START_S = 15.0
# Nothing is in flight once a config's requests are answered: skip the 30 s drain a Kubernetes rollout needs.
QUICK_EXIT = ("--drain-timeout", "0s", "--shutdown-grace", "1s")


@dataclass(frozen=True)
class Outcome:
    name: str
    pool: str  # "agg" or "pd"
    ok: bool
    detail: str  # served engines, or why it failed
    warnings: tuple[str, ...] = ()  # what epp said it could not have or do (the picker log's WARNINGs)


def logged_warnings(log: Path) -> tuple[str, ...]:
    """The distinct WARNING messages of an ``epp serve`` log (fallbacks, deprecations), without timestamps."""
    if not log.exists():
        return ()
    lines = log.read_text(encoding="utf-8", errors="replace").splitlines()
    return tuple(dict.fromkeys(line.split(" WARNING ", 1)[1] for line in lines if " WARNING " in line))


def needs_roles(config: Path) -> bool:
    """P/D (and E/P/D) configs select engines by their role label; every one names prefill (or, in a doc
    example, selects ``role: decode``)."""
    text = config.read_text(encoding="utf-8")
    return "prefill" in text or "role: decode" in text


def role_labels(role: str) -> dict[str, str]:
    """The labels a P/D engine carries in the deployments these configs come from: llm-d's role label, the
    bare ``role`` of llm-d-router's docs, and a DisaggregatedSet's name/revision/role (its rollout README)."""
    return {"llm-d.ai/role": role, "role": role, "disaggregatedset.x-k8s.io/name": "my-set",
            "disaggregatedset.x-k8s.io/revision": "r1", "disaggregatedset.x-k8s.io/role": role}


def _endpoints_file(path: Path, fleet: EngineFleet, roles: dict[str, str]) -> Path:
    endpoints = [{"name": name, "address": upstream.host, "port": str(upstream.port),
                  **({"labels": role_labels(roles[name])} if name in roles else {})}
                 for name, upstream in fleet.members.items()]
    path.write_text(yaml.safe_dump({"endpoints": endpoints}), encoding="utf-8")
    return path


FILE_DISCOVERIES = ("file-discovery", MULTICLUSTER_FILE_DISCOVERY)


def with_file_discovery(config: Path, members: Path, workdir: Path) -> Path | None:
    """A config whose ``dataLayer.discovery`` is a file discovery brings its own endpoint source (a path in
    the pod, e.g. /etc/epp/endpoints.yaml): a copy pointing it at ``members``, else None. A multicluster hub's
    file lists remote clusters' gateways; here the local engines stand in for them (one "cluster" each)."""
    document = yaml.safe_load(config.read_text(encoding="utf-8"))
    discovery = ((document.get("dataLayer") or {}).get("discovery") or {}).get("pluginRef")
    plugins = [p for p in document.get("plugins") or [] if p.get("type") in FILE_DISCOVERIES
               and (p.get("name") or p["type"]) == discovery]
    if not plugins:
        return None
    plugins[0].setdefault("parameters", {})["path"] = str(members)
    copy = workdir / config.name
    copy.write_text(yaml.safe_dump(document), encoding="utf-8")
    return copy


def with_primary_port(config: Path, members: EngineFleet, workdir: Path) -> tuple[Path, str] | None:
    """``data-parallel-profile-handler`` sends every request to the pod's ``primaryPort``, behind which its
    DP ranks sit. Here the pair's engines (one address) stand in for the ranks and the first one's port for
    the primary: a copy with that ``primaryPort`` and the engine every request must reach, else None."""
    document = yaml.safe_load(config.read_text(encoding="utf-8"))
    handlers = [p for p in document.get("plugins") or [] if p.get("type") == DATA_PARALLEL_PROFILE_HANDLER]
    if not handlers:
        return None
    primary, upstream = next(iter(members.members.items()))
    handlers[0].setdefault("parameters", {})["primaryPort"] = upstream.port
    copy = workdir / f"dp-{config.name}"
    copy.write_text(yaml.safe_dump(document), encoding="utf-8")
    return copy, primary


def request_headers(config: Path, members: EngineFleet) -> dict[str, str]:
    """What a client of this config sends: GIE's conformance config routes only where its test header says."""
    if HEADER_BASED_TESTING_FILTER in config.read_text(encoding="utf-8"):
        return {SELECTION_HEADER: next(iter(members.upstreams)).hostport}
    return {}


async def _send(envoy: EnvoyProcess, headers: dict[str, str]) -> list[Reply]:
    completion = {"model": MODEL, "prompt": "The capital of France is", "max_tokens": 4}
    return [
        await post(envoy, chat(MODEL, "hello there", max_tokens=4), headers=headers),
        await post(envoy, completion, path="/v1/completions", headers=headers),
    ]


def _route_one(config: Path, pool: str, members: Path, fleet: EngineFleet, envoy: EnvoyProcess,
               grpc_port: int, workdir: Path) -> Outcome:
    """``fleet`` is the config's pair, ``members`` its endpoints file; ``envoy`` calls ``grpc_port``."""
    log = workdir / f"{config.stem[-80:]}.log"
    discovering = with_file_discovery(config, members, workdir)
    data_parallel = with_primary_port(discovering or config, fleet, workdir)
    run_config, must_serve = data_parallel if data_parallel else (discovering or config, None)
    picker = PickerProcess((), endpoints_file=None if discovering else members, log_path=log,
                           extra_args=["--config-file", str(run_config), "--allow-experimental-plugins",
                                       *QUICK_EXIT])
    picker.grpc_port = grpc_port  # the port the long-lived Envoy calls
    try:
        try:
            picker.start(timeout=PICKER_START_S)
        except RuntimeError as err:
            tail = log.read_text(encoding="utf-8", errors="replace").strip().splitlines()[-1:] if log.exists() else []
            started_up = str(err).split("; log:", 1)[0]  # the log is in a temporary folder: quote its last line
            return Outcome(config.name, pool, False, f"{started_up}: {' '.join(tail)[:240]}")
        replies = asyncio.run(_send(envoy, request_headers(config, fleet)))
        bad = [r for r in replies if r.status != 200]
        if bad:
            detail = "; ".join(f"HTTP {r.status} {r.body[:120]!r}" for r in bad)
            return Outcome(config.name, pool, False, detail)
        entries = logged(envoy, [r.request_id for r in replies])
        served = sorted({fleet.name_of(e.upstream) or e.upstream for e in entries.values()})
        ok = len(entries) == len(replies) and all(fleet.name_of(e.upstream) for e in entries.values())
        if must_serve is not None:  # the primary port, whichever rank was picked
            ok = ok and served == [must_serve]
        return Outcome(config.name, pool, ok, "served by " + ",".join(served), logged_warnings(log))
    except Exception as err:  # noqa: BLE001 — one config's failure is a row of the table, not the end of the run
        return Outcome(config.name, pool, False, f"{type(err).__name__}: {err}"[:240])
    finally:
        picker.stop()


def route_all(configs: list[Path]) -> list[Outcome]:
    """Route every config in ``configs``; the engines and Envoy live for the whole run."""
    outcomes: list[Outcome] = []
    with tempfile.TemporaryDirectory(prefix="epp-corpus-route-") as tmp, contextlib.ExitStack() as stack:
        workdir = Path(tmp)
        fleet = start_engines(("agg-0", "agg-1"), MODEL, extra_args=SIM_ARGS)
        stack.callback(fleet.stop)
        prefill = start_engines(("prefill-0",), MODEL, extra_args=[*SIM_ARGS, "--role", "prefill"])
        stack.callback(prefill.stop)
        decode = start_engines(("decode-0",), MODEL, extra_args=[*SIM_ARGS, "--role", "decode"])
        stack.callback(decode.stop)
        pd = EngineFleet({**prefill.members, **decode.members}, [])
        everyone = EngineFleet({**fleet.members, **pd.members}, [])
        pools = {
            "agg": (fleet, _endpoints_file(workdir / "agg.yaml", fleet, {})),
            "pd": (pd, _endpoints_file(workdir / "pd.yaml", pd, {"prefill-0": "prefill", "decode-0": "decode"})),
        }
        grpc_port = free_port()
        envoy = EnvoyProcess(local_config(Upstream("127.0.0.1", grpc_port), everyone.upstreams, workdir), workdir)
        envoy.start()
        stack.callback(envoy.stop)
        for config in configs:
            pool = "pd" if needs_roles(config) else "agg"
            started = time.monotonic()
            members, endpoints = pools[pool]
            outcome = _route_one(config, pool, endpoints, members, envoy, grpc_port, workdir)
            print(f"{'ok  ' if outcome.ok else 'FAIL'} {time.monotonic() - started:4.1f}s {pool:3s} {config.name}\n"
                  f"            {outcome.detail}", flush=True)
            for warning in outcome.warnings:
                print(f"            warned: {warning[:200]}", flush=True)
            outcomes.append(outcome)
    return outcomes
