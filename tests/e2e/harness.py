"""The e2e harness: one real stack per session (three echo engines, ``epp serve`` plaintext and TLS, Envoys).

Envoys are started on first use, one per variant in ``VARIANTS``, and reused by every test that asks for
the same variant; everything is stopped by PID when the session ends. Pickers and Envoys are spawned
from the main thread (Envoy dies with the thread that spawned it).
"""

from __future__ import annotations

import contextlib
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import orjson

from epp._util.proc import free_port
from epp.demo.engines import EngineFleet, start_echo_engines
from epp.envoy import accesslog
from epp.envoy.config import BodyMode, Routing, Upstream
from epp.envoy.picker import PickerProcess
from epp.envoy.process import EnvoyProcess
from epp.envoy.stack import local_config

MAX_BODY_BYTES = 256 * 1024
ENGINES = ("a", "b", "c")

_BUFFERED_REQUEST: dict[str, Any] = {"request_body_mode": BodyMode.BUFFERED}

SESSION_AFFINITY_CONFIG = (
    "apiVersion: llm-d.ai/v1alpha1\nkind: EndpointPickerConfig\n"
    "plugins:\n- {type: session-affinity-scorer}\n- {type: max-score-picker}\n"
)
# GIE's conformance picker config: route where the test header says, echo the served endpoint.
CONFORMANCE_CONFIG = (
    "apiVersion: inference.networking.x-k8s.io/v1alpha1\nkind: EndpointPickerConfig\n"
    "plugins:\n- {type: header-based-testing-filter}\n- {type: destination-endpoint-served-verifier}\n"
    "- {type: max-score-picker}\n"
    "schedulingProfiles:\n- name: conformance\n  plugins:\n"
    "  - {pluginRef: header-based-testing-filter}\n  - {pluginRef: max-score-picker}\n"
)
# picker kind → extra ``epp serve`` flags (``tls`` also turns on TLS)
PICKER_ARGS: dict[str, list[str]] = {
    "plain": [],
    "tls": [],
    "session": ["--config-text", SESSION_AFFINITY_CONFIG],
    "conformance": ["--config-text", CONFORMANCE_CONFIG],
}

# variant → (which picker: a PICKER_ARGS kind or down, EnvoyConfig overrides)
VARIANTS: dict[str, tuple[str, dict[str, Any]]] = {
    "duplex": ("plain", {}),
    "buffered": (
        "plain",
        {"request_body_mode": BodyMode.BUFFERED, "response_body_mode": BodyMode.BUFFERED},
    ),
    "tls": ("tls", {"picker_tls": True}),
    "override-host": ("plain", {"routing": Routing.OVERRIDE_HOST}),
    "session-affinity": ("session", {}),
    "conformance": ("conformance", {"routing": Routing.OVERRIDE_HOST}),
    "conformance-original-dst": ("conformance", {}),
    # response_header_mode SKIP + response body NONE: what deployments without usage counting run
    "no-response-phase": ("plain", {"response_headers": False, "response_body_mode": BodyMode.NONE}),
    "subset-match": ("plain", {"subset_hint": ("127.0.0.1",)}),
    "subset-empty": ("plain", {"subset_hint": ()}),
    "subset-nomatch": ("plain", {"subset_hint": ("10.255.255.1",)}),
    "down-fail-closed": ("down", {"failure_mode_allow": False, "message_timeout_s": 2.0}),
    # Envoy 1.40 fails open in FULL_DUPLEX_STREAMED only until the first body chunk went to ext_proc, so a
    # real fail-open needs the request body BUFFERED (see test_failure_modes).
    "down-fail-open": ("down", {"failure_mode_allow": True, "routing": Routing.OVERRIDE_HOST, **_BUFFERED_REQUEST}),
    "down-fail-open-duplex": ("down", {"failure_mode_allow": True, "routing": Routing.OVERRIDE_HOST}),
    "down-fail-open-original-dst": ("down", {"failure_mode_allow": True, **_BUFFERED_REQUEST}),
}


class Stack:
    """Owns every process of the session; ``envoy(variant)`` starts that gateway on first use."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.engines: EngineFleet = start_echo_engines(ENGINES)
        self._pickers: dict[str, PickerProcess] = {}
        self._envoys: dict[str, EnvoyProcess] = {}
        self.down_picker = Upstream("127.0.0.1", free_port())  # nothing listens here

    def picker(self, kind: str) -> PickerProcess:
        if kind not in self._pickers:
            picker = PickerProcess(
                self.engines.upstreams,
                tls=kind == "tls",
                extra_args=["--max-body-bytes", str(MAX_BODY_BYTES), *PICKER_ARGS[kind]],
                log_path=self.workdir / f"epp-{kind}.log",
            )
            picker.start()
            self._pickers[kind] = picker
        return self._pickers[kind]

    def envoy(self, variant: str) -> EnvoyProcess:
        if variant not in self._envoys:
            kind, options = VARIANTS[variant]
            target = self.down_picker if kind == "down" else self.picker(kind).address
            workdir = self.workdir / variant
            envoy = EnvoyProcess(local_config(target, self.engines.upstreams, workdir, **options), workdir)
            envoy.start()
            self._envoys[variant] = envoy
        return self._envoys[variant]

    def close(self) -> None:
        """Stop everything, even when one stop fails (the first error is raised after the rest)."""
        with contextlib.ExitStack() as stack:  # callbacks run in reverse: Envoys, then pickers, then engines
            stack.callback(self.engines.stop)
            for picker in self._pickers.values():
                stack.callback(picker.stop)
            for envoy in self._envoys.values():
                stack.callback(envoy.stop)


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes
    request_id: str

    def json(self) -> Any:
        return orjson.loads(self.body)


async def post(
    envoy: EnvoyProcess,
    payload: dict[str, Any] | bytes,
    path: str = "/v1/chat/completions",
    headers: dict[str, str] | None = None,
) -> Reply:
    """POST through the gateway with a fresh ``x-request-id`` (to find the request in the access log)."""
    request_id = str(uuid.uuid4())
    body = payload if isinstance(payload, bytes) else orjson.dumps(payload)
    sent = {"content-type": "application/json", "x-request-id": request_id} | (headers or {})
    timeout = aiohttp.ClientTimeout(total=20)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        async with session.post(envoy.url + path, data=body, headers=sent) as reply:
            return Reply(reply.status, {k.lower(): v for k, v in reply.headers.items()}, await reply.read(), request_id)


def logged(envoy: EnvoyProcess, request_ids: list[str]) -> dict[str, accesslog.AccessLogEntry]:
    """Access-log entries for these requests, waiting (bounded) for Envoy to flush them."""
    return accesslog.wait_for(Path(envoy.config.access_log_path), request_ids)


def chat(model: str = "demo-model", content: str = "hello", **extra: Any) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": content}], **extra}
