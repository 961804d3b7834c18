"""Endpoint identity, engine-metrics snapshots, and the per-endpoint state the scheduler reads."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from epp.datastore.health import EndpointHealth

ENGINE_TYPE_LABELS = ("llm-d.ai/engine-type", "inference.networking.k8s.io/engine-type")
ROLE_LABEL = "llm-d.ai/role"
KV_EVENTS_PORT_LABEL = "epp/kv-events-port"
"""Where the endpoint's engine publishes KV events, when not at the pool-wide port (several engines
on one host)."""
DEFAULT_ENGINE = "vllm"


@dataclass(frozen=True, slots=True)
class Endpoint:
    """One model-server port: what discovery knows, immutable.

    ``name`` is unique in a datastore: ``<pod>-rank-<i>`` in Kubernetes (i = index in targetPorts),
    ``host:port`` for static endpoints.
    """

    name: str
    address: str
    port: int
    namespace: str = ""
    labels: Mapping[str, str] = field(default_factory=dict)
    metrics_port: int | None = None

    @property
    def hostport(self) -> str:
        """``ip:port`` as Envoy expects it in ``x-gateway-destination-endpoint`` (IPv6 bracketed)."""
        return self.with_port(self.port)

    def with_port(self, port: int) -> str:
        """``hostport`` for another port of the same address (a pod's primary port behind its DP ranks)."""
        host = f"[{self.address}]" if ":" in self.address else self.address
        return f"{host}:{port}"

    @property
    def engine(self) -> str:
        """Model-server kind from the reference's engine-type labels; ``vllm`` when unlabelled."""
        for label in ENGINE_TYPE_LABELS:
            value = self.labels.get(label)
            if value:
                return value
        return DEFAULT_ENGINE

    @property
    def role(self) -> str:
        """Disaggregation role (``prefill``, ``decode``, ``encode``); ``both`` when unlabelled."""
        return self.labels.get(ROLE_LABEL, "both")


@dataclass(frozen=True, slots=True)
class EndpointMetrics:
    """One scrape of an engine's ``/metrics``, mapped to engine-neutral fields.

    ``scraped_at`` is in the datastore clock's seconds. Fields the engine does not report stay ``None``
    (no LoRA family → ``max_lora`` None).
    """

    scraped_at: float
    waiting: int = 0
    running: int = 0
    kv_usage: float = 0.0
    active_loras: frozenset[str] = frozenset()
    waiting_loras: frozenset[str] = frozenset()
    max_lora: int | None = None
    block_size: int | None = None
    num_gpu_blocks: int | None = None
    models: frozenset[str] = frozenset()
    prompt_tokens: float | None = None
    """The engine's cumulative prompt-token counter (``vllm:prompt_tokens_total``), if it exports one."""
    cached_prompt_tokens: float | None = None
    """Its cumulative prefix-cache-hit tokens (``vllm:prompt_tokens_cached_total``): what the default
    vLLM reports without ``--enable-prompt-tokens-details``."""


@dataclass(slots=True)
class EndpointState:
    """What the scheduler sees for one endpoint: identity, last metrics, staleness, epp's own load and
    its passive health (``epp.datastore.health``).

    Mutated only by the datastore and the director; scheduling plugins treat it as read-only.
    """

    endpoint: Endpoint
    metrics: EndpointMetrics | None = None
    stale: bool = True
    scrape_error: str | None = None
    inflight_requests: int = 0
    inflight_tokens: int = 0
    attributes: dict[str, Any] = field(default_factory=dict)
    """Named values other data sources attach (DCGM ``GPUUtilization``, ``/v1/models`` ids …), keyed as
    the reference's endpoint attributes so attribute filters and scorers find them by the same name."""
    health: EndpointHealth = field(default_factory=lambda: EndpointHealth(0.0))

    @property
    def name(self) -> str:
        return self.endpoint.name

    @property
    def hostport(self) -> str:
        return self.endpoint.hostport
