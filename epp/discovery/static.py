"""``--static-endpoints HOST:PORT[@EVENTS_PORT][,…]``: a fixed pool, for running without Kubernetes.

Hostnames are resolved once at start, because Envoy's ORIGINAL_DST routing accepts only IP literals
in ``x-gateway-destination-endpoint``. Each endpoint is named by its ``ip:port``. ``@EVENTS_PORT``
names the port its engine publishes KV events on (the ``epp/kv-events-port`` label), for several
engines on one host: ``10.0.0.1:8000@5557,10.0.0.1:8001@5558``.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from typing import NamedTuple

from epp.datastore import Datastore, Endpoint
from epp.datastore.endpoint import KV_EVENTS_PORT_LABEL


class StaticTarget(NamedTuple):
    host: str
    port: int
    events_port: int | None = None


def parse_static_endpoints(spec: str) -> list[StaticTarget]:
    """``"10.0.0.1:8000,[fd00::1]:8000@5558,vllm:8000"`` → [(host, port, events port), …]; raises
    ValueError on bad entries."""
    targets: list[StaticTarget] = []
    for raw in spec.split(","):
        item, at, events_text = raw.strip().partition("@")
        if not item:
            continue
        events_port = None
        if at:
            if not events_text.isdigit() or not 0 < int(events_text) < 65536:
                raise ValueError(f"static endpoint {raw.strip()!r}: the KV-events port after '@' must be 1-65535")
            events_port = int(events_text)
        if item.startswith("["):
            host, sep, port_text = item[1:].partition("]:")
        else:
            host, sep, port_text = item.rpartition(":")
            if ":" in host:
                raise ValueError(f"static endpoint {item!r}: write IPv6 addresses as [addr]:port")
        if not sep or not host:
            raise ValueError(f"static endpoint {item!r}: expected HOST:PORT")
        if not port_text.isdigit() or not 0 < int(port_text) < 65536:
            raise ValueError(f"static endpoint {item!r}: port must be 1-65535")
        targets.append(StaticTarget(host, int(port_text), events_port))
    if not targets:
        raise ValueError("--static-endpoints lists no endpoint")
    return targets


async def resolve_host(host: str) -> str:
    """An IP literal as is; otherwise the resolver's first address for the name."""
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        pass
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise ValueError(f"static endpoint host {host!r} does not resolve: {exc}") from None
    return str(infos[0][4][0])


class StaticDiscovery:
    """Puts a fixed endpoint list into the datastore once and marks it synced."""

    def __init__(self, spec: str) -> None:
        self.targets = parse_static_endpoints(spec)

    async def start(self, datastore: Datastore) -> list[Endpoint]:
        endpoints: dict[str, Endpoint] = {}
        for host, port, events_port in self.targets:
            address = await resolve_host(host)
            probe = Endpoint("", address, port)
            labels = {} if events_port is None else {KV_EVENTS_PORT_LABEL: str(events_port)}
            endpoints[probe.hostport] = Endpoint(probe.hostport, address, port, labels=labels)
        datastore.replace_all(endpoints.values())
        datastore.mark_synced()
        return list(endpoints.values())
