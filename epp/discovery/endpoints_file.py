"""The endpoints file of llm-d's ``file-discovery`` plugin: YAML (or JSON) → validated ``Endpoint`` list.

Format (the reference's)::

    endpoints:
      - name: vllm-0              # required, unique in the file
        namespace: prod           # optional, default "default"
        address: "10.0.0.1"       # required IP literal; hostnames are not resolved
        port: "8000"              # required, 1-65535 (the reference wants a string; an int is accepted too)
        metricsHost: "10.0.0.1:9090"  # optional: scrape metrics on another port of the same address
        labels: {llm-d.ai/engine-type: vllm, llm-d.ai/role: decode}

Differences from the reference, all stricter-or-equal on the files it accepts: every invalid entry is
reported at once with its index and name, a file is rejected as a whole (never applied partially),
an empty document or a missing ``endpoints`` key is an error (``endpoints: []`` is how to say "none"),
names must be unique across namespaces (the datastore keys endpoints by name), IPv6 literals are
accepted, and ``metricsHost`` must name the endpoint's own address. Unknown keys are logged, not fatal.
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Mapping
from pathlib import Path

import yaml

from epp.datastore import Endpoint

log = logging.getLogger(__name__)

MAX_FILE_BYTES = 1 << 20  # the reference's cap
DEFAULT_NAMESPACE = "default"
ENTRY_KEYS = frozenset({"name", "namespace", "address", "port", "metricsHost", "labels"})


class EndpointsFileError(ValueError):
    """The endpoints file cannot be used; the message names the file and every bad entry."""


def load_endpoints(path: Path) -> list[Endpoint]:
    """Read and validate ``path``; raises ``EndpointsFileError`` (never applies a partial file)."""
    try:
        with path.open("rb") as fh:
            data = fh.read(MAX_FILE_BYTES + 1)
    except OSError as exc:
        raise EndpointsFileError(f"{path}: cannot read: {exc.strerror or exc}") from None
    if len(data) > MAX_FILE_BYTES:
        raise EndpointsFileError(f"{path}: larger than the 1 MiB limit")
    return parse_endpoints(data, str(path))


def parse_endpoints(data: bytes | str, source: str = "<endpoints>") -> list[Endpoint]:
    """Validate an endpoints document; ``source`` prefixes every error message."""
    try:
        doc = yaml.safe_load(data)
    except yaml.YAMLError as exc:
        raise EndpointsFileError(f"{source}: not valid YAML/JSON: {exc}") from None
    if not isinstance(doc, Mapping) or "endpoints" not in doc:
        raise EndpointsFileError(f"{source}: expected a mapping with an 'endpoints' list (use 'endpoints: []' for none)")
    entries = doc["endpoints"]
    if entries is None:
        entries = []
    if not isinstance(entries, list):
        raise EndpointsFileError(f"{source}: 'endpoints' must be a list, got {type(entries).__name__}")
    problems: list[str] = []
    endpoints: list[Endpoint] = []
    seen: dict[str, int] = {}
    for index, entry in enumerate(entries):
        where = f"endpoints[{index}]"
        if isinstance(entry, Mapping) and isinstance(entry.get("name"), str) and entry["name"]:
            where += f" ({entry['name']!r})"
        try:
            endpoint = _entry(entry, where, source)
        except EndpointsFileError as exc:
            problems.append(str(exc))
            continue
        if endpoint.name in seen:
            problems.append(f"{where}: duplicate name, first used by endpoints[{seen[endpoint.name]}]")
            continue
        seen[endpoint.name] = index
        endpoints.append(endpoint)
    if problems:
        raise EndpointsFileError(f"{source}: " + "; ".join(problems))
    return endpoints


def _entry(entry: object, where: str, source: str) -> Endpoint:
    if not isinstance(entry, Mapping):
        raise EndpointsFileError(f"{where}: expected a mapping, got {type(entry).__name__}")
    unknown = sorted(str(k) for k in entry if k not in ENTRY_KEYS)
    if unknown:
        log.warning("%s: %s: ignoring unknown keys %s", source, where, ", ".join(unknown))
    name = entry.get("name")
    if not isinstance(name, str) or not name:
        raise EndpointsFileError(f"{where}: 'name' is required and must be a non-empty string")
    namespace = entry.get("namespace") or DEFAULT_NAMESPACE
    if not isinstance(namespace, str):
        raise EndpointsFileError(f"{where}: 'namespace' must be a string")
    address = _address(entry.get("address"), where)
    port = _port(entry.get("port"), f"{where}: 'port'")
    return Endpoint(
        name=name,
        address=address,
        port=port,
        namespace=namespace,
        labels=_labels(entry.get("labels"), where),
        metrics_port=_metrics_port(entry.get("metricsHost"), address, where),
    )


def _address(value: object, where: str) -> str:
    try:
        return str(ipaddress.ip_address(value if isinstance(value, str) else ""))
    except ValueError:
        raise EndpointsFileError(f"{where}: 'address' must be an IP literal, got {value!r}") from None


def _port(value: object, what: str) -> int:
    text = str(value).strip() if isinstance(value, (str, int)) and not isinstance(value, bool) else ""
    if not (text.isascii() and text.isdigit()) or not 1 <= int(text) <= 65535:
        raise EndpointsFileError(f"{what} must be an integer 1-65535, got {value!r}")
    return int(text)


def _labels(value: object, where: str) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, Mapping) or not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
        raise EndpointsFileError(f"{where}: 'labels' must map strings to strings (quote numbers and booleans)")
    return dict(value)


def _metrics_port(value: object, address: str, where: str) -> int | None:
    if value is None or value == "":
        return None
    host, sep, port = str(value).rpartition(":")
    if not sep or (host and _normalised(host.strip("[]")) != address):
        raise EndpointsFileError(f"{where}: 'metricsHost' must be '{address}:<port>' (another host is not supported), got {value!r}")
    return _port(port, f"{where}: 'metricsHost' port")


def _normalised(host: str) -> str | None:
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        return None
