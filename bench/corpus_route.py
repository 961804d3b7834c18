"""``bench/corpus.py --route``: every loadable real upstream config routes a chat and a completion request
through a real Envoy → ``epp serve --config-file <config>`` → ``epp sim`` engines.

The engines start once: an aggregated pair and a prefill/decode pair (``llm-d.ai/role`` labels from an
endpoints file, as tests/e2e/test_disagg.py does). One Envoy fronts all four and keeps running; per config
only ``epp serve`` is (re)started on the same gRPC port, over the pair the config needs (P/D when the config
mentions prefill). Alpha plugins are loaded (``--allow-experimental-plugins``), as a deployment of those
configs must. Every process is stopped by PID.
"""

from __future__ import annotations

import asyncio
import contextlib
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from epp._util.proc import free_port
from epp.demo.engines import EngineFleet, start_engines
from epp.envoy.config import Upstream
from epp.envoy.picker import PickerProcess
from epp.envoy.process import EnvoyProcess
from epp.envoy.stack import local_config
from tests.e2e.harness import Reply, chat, logged, post

MODEL = "meta-llama/Llama-3.1-8B-Instruct"
SIM_ARGS = ("--time-scale", "0")
PICKER_START_S = 15.0


@dataclass(frozen=True)
class Outcome:
    name: str
    pool: str  # "agg" or "pd"
    ok: bool
    detail: str  # served engines, or why it failed
    seconds: float


def needs_roles(config: Path) -> bool:
    """P/D (and E/P/D) configs select engines by their ``llm-d.ai/role`` label; every one names prefill."""
    return "prefill" in config.read_text(encoding="utf-8")


def _endpoints_file(path: Path, fleet: EngineFleet, roles: dict[str, str]) -> Path:
    lines = ["endpoints:"]
    for name, upstream in fleet.members.items():
        labels = f", labels: {{llm-d.ai/role: {roles[name]}}}" if name in roles else ""
        lines.append(f"  - {{name: {name}, address: \"{upstream.host}\", port: \"{upstream.port}\"{labels}}}")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


async def _send(envoy: EnvoyProcess) -> list[Reply]:
    completion = {"model": MODEL, "prompt": "The capital of France is", "max_tokens": 4}
    return [
        await post(envoy, chat(MODEL, "hello there", max_tokens=4)),
        await post(envoy, completion, path="/v1/completions"),
    ]


def _route_one(config: Path, pool: str, members: Path, fleet: EngineFleet, envoy: EnvoyProcess,
               grpc_port: int, workdir: Path) -> Outcome:
    started = time.monotonic()
    log = workdir / f"{config.stem[-80:]}.log"
    picker = PickerProcess((), endpoints_file=members, log_path=log,
                           extra_args=["--config-file", str(config), "--allow-experimental-plugins"])
    picker.grpc_port = grpc_port  # the port the long-lived Envoy calls
    try:
        try:
            picker.start(timeout=PICKER_START_S)
        except RuntimeError as err:
            tail = log.read_text(encoding="utf-8", errors="replace").strip().splitlines()[-1:] if log.exists() else []
            return Outcome(config.name, pool, False, f"{err}: {' '.join(tail)[:200]}", time.monotonic() - started)
        replies = asyncio.run(_send(envoy))
        bad = [r for r in replies if r.status != 200]
        if bad:
            detail = "; ".join(f"HTTP {r.status} {r.body[:120]!r}" for r in bad)
            return Outcome(config.name, pool, False, detail, time.monotonic() - started)
        entries = logged(envoy, [r.request_id for r in replies])
        served = sorted({fleet.name_of(e.upstream) or e.upstream for e in entries.values()})
        ok = len(entries) == len(replies) and all(fleet.name_of(e.upstream) for e in entries.values())
        return Outcome(config.name, pool, ok, "served by " + ",".join(served), time.monotonic() - started)
    except Exception as err:  # noqa: BLE001 — one config's failure is a row of the table, not the end of the run
        return Outcome(config.name, pool, False, f"{type(err).__name__}: {err}"[:240], time.monotonic() - started)
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
            "agg": _endpoints_file(workdir / "agg.yaml", fleet, {}),
            "pd": _endpoints_file(workdir / "pd.yaml", pd, {"prefill-0": "prefill", "decode-0": "decode"}),
        }
        grpc_port = free_port()
        envoy = EnvoyProcess(local_config(Upstream("127.0.0.1", grpc_port), everyone.upstreams, workdir), workdir)
        envoy.start()
        stack.callback(envoy.stop)
        for config in configs:
            pool = "pd" if needs_roles(config) else "agg"
            outcome = _route_one(config, pool, pools[pool], everyone, envoy, grpc_port, workdir)
            print(f"{'ok  ' if outcome.ok else 'FAIL'} {outcome.seconds:4.1f}s {pool:3s} {config.name}\n"
                  f"            {outcome.detail}", flush=True)
            outcomes.append(outcome)
    return outcomes
