"""``--static-endpoints HOST:PORT[,HOST:PORT…]``: a fixed pool, for running without Kubernetes.

Hostnames are resolved once at start, because Envoy's ORIGINAL_DST routing accepts only IP literals
in ``x-gateway-destination-endpoint``. Each endpoint is named by its ``ip:port``.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket

from epp.datastore import Datastore, Endpoint


def parse_static_endpoints(spec: str) -> list[tuple[str, int]]:
    """``"10.0.0.1:8000,[fd00::1]:8000,vllm:8000"`` → [(host, port), …]; raises ValueError on bad entries."""
    targets: list[tuple[str, int]] = []
    for raw in spec.split(","):
        item = raw.strip()
        if not item:
            continue
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
        targets.append((host, int(port_text)))
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
        for host, port in self.targets:
            address = await resolve_host(host)
            probe = Endpoint("", address, port)
            endpoints[probe.hostport] = Endpoint(probe.hostport, address, port)
        datastore.replace_all(endpoints.values())
        datastore.mark_synced()
        return list(endpoints.values())
