"""The parameters every llm-d HTTP data source takes, and the source/extractor contracts.

A source plugin says where to fetch (``scheme``, ``path``, ``port`` override, TLS options, ``interval``);
an extractor plugin turns one fetched body for one endpoint into named attributes. Both are plain
objects (plugins in ``epp.metrics.plugins``): ``epp.metrics.sources``, which owns this
contract, does the polling.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from epp.datastore import Endpoint
from epp.plugin.params import Duration, ParamError
from epp.plugin.typed_name import Plugin, TypedName

RANK_SUFFIX = "-rank-"


@dataclass(frozen=True, slots=True)
class HttpSourceParams:
    """Fields shared by llm-d's HTTP sources; each source gives its own defaults."""

    scheme: str = "http"
    path: str = "/metrics"
    port: int | None = None
    insecure_skip_verify: bool = True
    ca_cert_path: str | None = None
    client_cert_path: str | None = None
    client_key_path: str | None = None
    interval: Duration | None = None
    use_node_address: bool = False

    def __post_init__(self) -> None:
        if self.scheme not in ("http", "https"):
            raise ParamError("scheme", f"unsupported scheme {self.scheme!r} (http or https)")
        if not self.path.startswith("/"):
            raise ParamError("path", "must start with /")
        if self.port is not None and not 0 < self.port < 65536:
            raise ParamError("port", "must be a TCP port (1-65535)")
        if (self.client_cert_path is None) != (self.client_key_path is None):
            raise ParamError("clientCertPath", "clientCertPath and clientKeyPath go together")


@runtime_checkable
class HttpSource(Plugin, Protocol):
    """A data source the poller fetches per endpoint; ``extractor_type`` names the extractors it feeds."""

    params: HttpSourceParams
    extractor_type: str


@runtime_checkable
class Extractor(Plugin, Protocol):
    def extract(self, endpoint: Endpoint, body: str) -> Mapping[str, Any]:
        """Attributes for ``endpoint`` from one fetched body; ValueError when the body has none."""
        ...


@dataclass(slots=True)
class SourcePlugin:
    """A configured HTTP source: typed name, parameters, and the extractor type it pairs with."""

    typed_name: TypedName
    params: HttpSourceParams
    extractor_type: str


def pod_name(endpoint: Endpoint) -> str:
    """The pod an endpoint belongs to: discovery names endpoints ``<pod>-rank-<i>``."""
    name = endpoint.name
    head, sep, tail = name.rpartition(RANK_SUFFIX)
    return head if sep and tail.isdigit() else name
