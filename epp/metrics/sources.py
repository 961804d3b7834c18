"""Pollers for the config's other HTTP data sources (``dcgm-data-source``, ``models-data-source``):
per endpoint, fetch the source's URL every interval and store what its extractors make of the body as
endpoint attributes (``Datastore.update_attributes``).

They reuse ``MetricsPoller``'s per-endpoint tasks, bounded bodies and once-per-change failure logging;
only the URL, the TLS options and what is done with a body differ. Failures are not counted in
``llm_d_epp_datalayer_poll_errors_total`` (that family belongs to the engine metrics poller).
"""

from __future__ import annotations

import ssl
from collections.abc import Mapping, Sequence

import aiohttp

from epp.datastore import Datastore, Endpoint
from epp.metrics.poller import MetricsPoller, ScrapeFailure, _State
from epp.metrics.http_source import Extractor, HttpSource, HttpSourceParams
from epp.plugin.typed_name import Plugin


class AttributePoller(MetricsPoller):
    """One configured HTTP source and the extractors it feeds."""

    def __init__(self, datastore: Datastore, source: HttpSource, extractors: Sequence[Extractor], interval: float) -> None:
        params = source.params
        super().__init__(datastore, interval=params.interval or interval, timeout=max(1.0, params.interval or 0.0))
        self.source = source
        self.params: HttpSourceParams = params
        self.extractors = list(extractors)

    async def start(self) -> None:
        if self._state is not _State.NEW:
            raise RuntimeError(f"{self.source.typed_name} poller is {self._state.value}; it can be started once")
        connector = aiohttp.TCPConnector(limit=0, ssl=self._ssl())
        self._session = aiohttp.ClientSession(connector=connector, timeout=self._timeout)
        self._state = _State.RUNNING
        self._datastore.add_listener(self)

    def _ssl(self) -> ssl.SSLContext | bool:
        p = self.params
        if p.scheme != "https":
            return True
        try:
            context = ssl.create_default_context(cafile=p.ca_cert_path)
            if p.client_cert_path is not None:
                context.load_cert_chain(p.client_cert_path, p.client_key_path)
        except OSError as err:  # ssl's FileNotFoundError names no file: say which parameter points where
            raise OSError(f"{self.source.typed_name}: https scraping: caCertPath {p.ca_cert_path!r}, clientCertPath "
                          f"{p.client_cert_path!r}, clientKeyPath {p.client_key_path!r}: {err}") from err
        if p.insecure_skip_verify:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        return context

    def url(self, endpoint: Endpoint) -> str:
        host = endpoint.hostport.rpartition(":")[0]
        return f"{self.params.scheme}://{host}:{self.params.port or endpoint.port}{self.params.path}"

    async def _scrape_once(self, endpoint: Endpoint) -> None:
        try:
            body = await self._fetch(endpoint)
            values: dict[str, object] = {}
            for extractor in self.extractors:
                try:
                    values.update(extractor.extract(endpoint, body))
                except ValueError as err:
                    raise ScrapeFailure("parse", f"{extractor.typed_name}: {err}") from None
        except ScrapeFailure as exc:
            self._failed(endpoint, exc)
        else:
            self._datastore.update_attributes(endpoint.name, values)
            self._failing.pop(endpoint.name, None)


def attribute_pollers(
    listed: Mapping[str, Sequence[str]], plugins: Sequence[Plugin], datastore: Datastore, interval: float
) -> list[AttributePoller]:
    """A poller per configured HTTP source, fed by the extractors ``listed`` names for it (the config's
    ``dataLayer.sources``: source name → extractor names), or (a source not listed) by every configured
    extractor of the source's kind."""
    by_name = {p.typed_name.name: p for p in plugins}
    pollers = []
    for plugin in plugins:
        if not isinstance(plugin, HttpSource):
            continue
        name = plugin.typed_name.name
        if name in listed:
            extractors = [by_name[e] for e in listed[name] if isinstance(by_name.get(e), Extractor)]
        else:
            extractors = [p for p in plugins if isinstance(p, Extractor) and p.typed_name.type == plugin.extractor_type]
        if extractors:
            pollers.append(AttributePoller(datastore, plugin, extractors, interval))  # type: ignore[arg-type]
    return pollers
