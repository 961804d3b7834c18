"""Which discovery feeds ``epp serve``'s datastore: exactly one endpoint source, chosen from flags and config.

Sources, as a user names them:

* Kubernetes: ``--pool-name`` or ``--endpoint-selector`` (``epp.discovery.kube_setup``);
* a fixed list: ``--static-endpoints HOST:PORT,…``;
* llm-d's endpoints file: ``--endpoints-file PATH`` (reloaded on change unless ``--watch-endpoints-file=false``), or
  the config's ``dataLayer: {discovery: {pluginRef: NAME}}`` naming a ``file-discovery`` plugin with
  ``parameters: {path, watchFile}`` (gie-facts C8).

Zero or several sources is a ``SourceError`` naming them, raised before anything starts, because a
picker that silently preferred one source over another would route to the wrong pool.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry

from epp.config import EndpointPickerConfig, plugin_specs
from epp.datastore import Datastore
from epp.discovery.file import FILE_DISCOVERY, FileDiscovery
from epp.discovery.kube_setup import KubernetesFlags, build_runtime
from epp.discovery.static import StaticDiscovery

log = logging.getLogger(__name__)

MULTICLUSTER_FILE_DISCOVERY = "multicluster-file-discovery"


# Incoming model → (InferenceModelRewrite name, target model), or None when no rule applies.
ModelRewriter = Callable[[str], "tuple[str, str] | None"]


class SourceError(ValueError):
    """No endpoint source, several, or one that is misconfigured."""


@dataclass(frozen=True, slots=True)
class SourceFlags:
    """The flags that name an endpoint source (``epp.serve_config`` builds them from ``epp serve``'s)."""

    static_endpoints: str = ""
    endpoints_file: str = ""
    watch_endpoints_file: bool = True
    kubernetes: KubernetesFlags = field(default_factory=KubernetesFlags)


@dataclass
class EndpointSource:
    """One started-on-enter discovery: ``ready`` gates health, ``objective_priority`` feeds admission,
    ``model_rewriter`` resolves InferenceModelRewrite rules.

    ``files`` is the file discovery when the source is an endpoints file (tests and logs use it).
    """

    name: str
    running: contextlib.AbstractAsyncContextManager[object]
    ready: Callable[[], bool]
    objective_priority: Callable[[str], int] | None = None
    files: FileDiscovery | None = None
    model_rewriter: ModelRewriter | None = None


def select_source(
    flags: SourceFlags, config: EndpointPickerConfig, datastore: Datastore, registry: CollectorRegistry
) -> EndpointSource:
    """The one source the flags and config name; raises ``SourceError`` (or the source's ``ValueError``)."""
    config_file = _config_file_discovery(config)
    named = [
        flag for flag, given in (
            ("--pool-name", bool(flags.kubernetes.pool_name)),
            ("--endpoint-selector", bool(flags.kubernetes.endpoint_selector)),
            ("--static-endpoints", bool(flags.static_endpoints)),
            ("--endpoints-file", bool(flags.endpoints_file)),
            ("dataLayer.discovery in the config", config_file is not None),
        ) if given
    ]
    if len(named) != 1:
        what = "no endpoint source" if not named else f"conflicting endpoint sources ({', '.join(named)})"
        raise SourceError(
            f"{what}: pass exactly one of --pool-name, --endpoint-selector, --static-endpoints, --endpoints-file, "
            "or a file-discovery plugin referenced by dataLayer.discovery in the config"
        )
    if flags.kubernetes.enabled:
        kube = build_runtime(flags.kubernetes, datastore, registry=registry)
        assert kube is not None
        return EndpointSource("kubernetes", kube, lambda: kube.ready, kube.objective_priority,
                              model_rewriter=kube.model_rewrite)
    if flags.static_endpoints:
        return EndpointSource("static", _static(StaticDiscovery(flags.static_endpoints), datastore),
                              lambda: datastore.synced)
    if flags.endpoints_file:
        files = FileDiscovery(flags.endpoints_file, datastore, reload=flags.watch_endpoints_file)
    else:
        assert config_file is not None
        files = FileDiscovery.from_parameters(config_file, datastore)
    return EndpointSource("file", files, lambda: datastore.synced, files=files)


def _config_file_discovery(config: EndpointPickerConfig) -> dict[str, object] | None:
    """``parameters`` of the file-discovery plugin ``dataLayer.discovery`` refers to, if any."""
    ref = config.data_layer.discovery if config.data_layer is not None else None
    declared = plugin_specs(config, FILE_DISCOVERY)
    if ref is None:
        if declared:
            log.warning("%s plugin %r is declared but not referenced by dataLayer.discovery: not used",
                        FILE_DISCOVERY, declared[0].name)
        return None
    spec = next((p for p in config.plugins if p.name == ref), None)
    if spec is None or spec.type not in (FILE_DISCOVERY, MULTICLUSTER_FILE_DISCOVERY):
        kind = "undeclared" if spec is None else f"of type {spec.type!r}"
        raise SourceError(f"dataLayer.discovery.pluginRef: {ref!r} is {kind}; epp serve supports {FILE_DISCOVERY!r} "
                          f"and {MULTICLUSTER_FILE_DISCOVERY!r} here")
    if spec.type == MULTICLUSTER_FILE_DISCOVERY:
        log.info("%s: each entry of %s is a remote cluster's gateway, routed to as one endpoint (alpha; a hub "
                 "needs the other clusters' gateways reachable and, for the multicluster scorers, their pickers' "
                 "pool metrics; addresses must be IP literals here)", MULTICLUSTER_FILE_DISCOVERY, spec.parameters.get("path"))
    return dict(spec.parameters)


@contextlib.asynccontextmanager
async def _static(discovery: StaticDiscovery, datastore: Datastore) -> AsyncIterator[object]:
    endpoints = await discovery.start(datastore)
    log.info("static pool: %s", ", ".join(e.hostport for e in endpoints))
    yield discovery
