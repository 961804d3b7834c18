"""The demo's sequence: start engines, epp and Envoy; send the sample traffic; print the table; stop all."""

from __future__ import annotations

import asyncio
import shutil
import string
import tempfile
from pathlib import Path

import aiohttp
from rich.console import Console

from epp.demo import report
from epp.demo.engines import EngineFleet, start_engines
from epp.demo.traffic import MODEL, DemoClient, Outcome
from epp.envoy import accesslog
from epp.envoy.stack import LocalGateway


async def _send(url: str) -> list[Outcome]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as session:
        return await DemoClient(session, url).run_sample()


def run_demo(engines: int, *, policy: str, tls: bool = False, keep_dir: bool = False) -> int:
    """Start, send, report, stop; the work directory goes too unless ``keep_dir`` (also on Ctrl-C)."""
    console = Console()
    workdir = Path(tempfile.mkdtemp(prefix="epp-demo-"))
    names = [f"engine-{letter}" for letter in string.ascii_lowercase[:engines]]
    console.print(f"Starting {engines} local engines, epp serve and Envoy (work dir {workdir}) …")
    fleet = EngineFleet({}, [])
    try:
        # the report's "cached tokens" column is usage.prompt_tokens_details, which vLLM sends only with this flag
        fleet = start_engines(names, MODEL, extra_args=["--enable-prompt-tokens-details"])
        gateway = LocalGateway(fleet.upstreams, workdir, picker_tls=tls, picker_args=["--config-file", policy])
        with gateway:
            console.print(f"  engines: {', '.join(f'{n}={u.hostport}' for n, u in fleet.members.items())}")
            console.print(f"  epp serve: ext_proc {gateway.picker.address.hostport} "
                          f"({'TLS' if tls else 'plaintext'}, policy {policy}), pid {gateway.picker.pid}")  # fmt: skip
            console.print(f"  Envoy {gateway.url} (admin :{gateway.envoy.config.admin_port}), pid {gateway.envoy.pid}")
            console.print("Sending sample traffic through Envoy …\n")
            outcomes = asyncio.run(_send(gateway.url))
            entries = accesslog.wait_for(gateway.access_log, [o.request.request_id for o in outcomes])
            report.render(outcomes, entries, fleet, console, policy)
            streams = gateway.envoy.stats("ext_proc.streams_started")
            console.print(f"ext_proc streams Envoy opened to epp: {sum(streams.values())}")
    finally:
        fleet.stop()
        if keep_dir:
            console.print(f"Configs and logs kept in {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    console.print("Stopped Envoy, epp and the engines.")
    failed = [o for o in outcomes if o.status != 200]
    return 1 if failed else 0
