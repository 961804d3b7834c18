"""The engine metrics poller: one task per datastore endpoint scraping ``/metrics`` every tick.

Each endpoint is polled by its own task, so a slow or dead server delays nobody else. A failed scrape
(timeout, refused connection, HTTP error, oversized body, unparsable or incomplete text) is recorded
with ``Datastore.record_scrape_error``: the last good snapshot stays and ages into staleness against
the datastore's clock. Failures are counted in ``llm_d_epp_datalayer_poll_errors_total`` and logged
once per change of an endpoint's failure reason, never per tick.
"""

from __future__ import annotations

import asyncio
import enum
import logging
from collections.abc import Mapping
from dataclasses import dataclass

import aiohttp
from prometheus_client import CollectorRegistry, Counter

from epp._util.lifecycle import AsyncService
from epp.datastore import Datastore, Endpoint
from epp.metrics.engines import ENGINES, EngineSpec, engine_kind
from epp.metrics.extract import EngineExtractor, MetricsError

log = logging.getLogger(__name__)

SOURCE_TYPE = "metrics-data-source"
MAX_BODY_BYTES = 16 * 1024 * 1024


class _State(enum.Enum):
    NEW = "new"
    RUNNING = "running"
    STOPPED = "stopped"


@dataclass(frozen=True, slots=True)
class ScrapeTarget:
    """Where each endpoint's metrics page is: GIE's ``--model-server-metrics-{scheme,path,port,
    https-insecure-skip-verify}``. ``port`` 0 means the endpoint's metrics port, else its serving port;
    HTTPS certificates are not verified unless ``insecure_skip_verify`` is False (GIE's default is true:
    model servers mostly serve self-signed certificates)."""

    scheme: str = "http"
    path: str = "/metrics"
    port: int = 0
    insecure_skip_verify: bool = True

    def __post_init__(self) -> None:
        if self.scheme not in ("http", "https"):
            raise ValueError(f"metrics scheme must be http or https, got {self.scheme!r}")
        if not self.path.startswith("/"):
            raise ValueError(f"metrics path must start with '/', got {self.path!r}")

    def url(self, endpoint: Endpoint) -> str:
        """``scheme://address:port/path``, IPv6 addresses bracketed."""
        host = endpoint.hostport.rpartition(":")[0]
        return f"{self.scheme}://{host}:{self.port or endpoint.metrics_port or endpoint.port}{self.path}"


class ScrapeFailure(Exception):
    """One failed scrape: ``reason`` is a small fixed vocabulary (metric label), ``detail`` is free text."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason


class MetricsPoller(AsyncService):
    """Keeps every datastore endpoint's ``EndpointMetrics`` fresh.

    Use as ``async with MetricsPoller(ds): ...`` or ``await start()`` / ``await stop()``. ``start``
    registers the poller as a datastore listener (do not add it yourself), which also starts polling
    endpoints already present. ``interval`` is the reference's ``--refresh-metrics-interval`` (50 ms);
    ``timeout`` bounds one scrape — shorter than the reference's 10 s because the snapshot is stale
    after ``Datastore.staleness_threshold`` (2 s) anyway, and an early error says why. A stopped
    poller cannot be restarted (the datastore has no way to drop a listener).
    """

    def __init__(
        self,
        datastore: Datastore,
        interval: float = 0.050,
        timeout: float = 1.0,
        registry: CollectorRegistry | None = None,
        target: ScrapeTarget | None = None,
        specs: Mapping[str, EngineSpec] = ENGINES,
    ) -> None:
        """``target``: scheme, path and port of the pages (default ``http://…/metrics``); ``specs``: the
        series read per engine kind (default ``ENGINES``; GIE's metric-name flags replace the default kind's)."""
        if interval <= 0 or timeout <= 0:
            raise ValueError(f"interval ({interval}) and timeout ({timeout}) must be positive")
        self._datastore = datastore
        self._interval = interval
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self.target = target or ScrapeTarget()
        self._extractors = {name: EngineExtractor(spec) for name, spec in specs.items()}
        self._errors = Counter(
            "llm_d_epp_datalayer_poll_errors_total",
            "Failed engine /metrics scrapes, by data-source type and failure reason.",
            ["source_type", "reason"],
            registry=registry,
        )
        self._state = _State.NEW
        self._session: aiohttp.ClientSession | None = None
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._retiring: set[asyncio.Task[None]] = set()  # cancelled on removal, maybe still unwinding
        self._failing: dict[str, str] = {}

    # -- lifecycle ----------------------------------------------------------------------------
    async def start(self) -> None:
        if self._state is not _State.NEW:
            raise RuntimeError(f"MetricsPoller is {self._state.value}; it can be started once")
        verify = self.target.scheme == "https" and not self.target.insecure_skip_verify
        connector = aiohttp.TCPConnector(limit=0, ssl=True if verify else False)
        self._session = aiohttp.ClientSession(connector=connector, timeout=self._timeout)
        self._state = _State.RUNNING
        self._datastore.add_listener(self)

    async def stop(self) -> None:
        """Cancel every endpoint task, wait for them, close the HTTP session. Idempotent."""
        if self._state is _State.STOPPED:
            return
        if self._state is _State.RUNNING:
            self._datastore.remove_listener(self)
        self._state = _State.STOPPED
        tasks = [*self._tasks.values(), *self._retiring]
        self._tasks.clear()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)  # none may still use the session below
        self._retiring.clear()
        if self._session is not None:
            await self._session.close()

    @property
    def polled(self) -> frozenset[str]:
        """Names of the endpoints being polled right now."""
        return frozenset(self._tasks)

    @property
    def idle(self) -> bool:
        """No polling task is alive, not even one cancelled on removal that is still unwinding."""
        return not self._tasks and not self._retiring

    # -- DatastoreListener ----------------------------------------------------------------------
    def endpoint_added(self, endpoint: Endpoint) -> None:
        if self._state is _State.RUNNING and endpoint.name not in self._tasks:
            self._tasks[endpoint.name] = asyncio.get_running_loop().create_task(
                self._poll(endpoint.name), name=f"metrics-poll:{endpoint.name}"
            )

    def endpoint_removed(self, endpoint: Endpoint) -> None:
        task = self._tasks.pop(endpoint.name, None)
        if task is not None:
            task.cancel()
            self._retiring.add(task)  # stop() waits for it before closing the session
            task.add_done_callback(self._retiring.discard)
        self._failing.pop(endpoint.name, None)

    # -- polling ---------------------------------------------------------------------------------
    async def _poll(self, name: str) -> None:
        """Scrape ``name`` every interval until removed; a slow scrape delays only the next one."""
        loop = asyncio.get_running_loop()
        due = loop.time()
        while (state := self._datastore.get(name)) is not None:
            await self._scrape_once(state.endpoint)
            due = max(due + self._interval, loop.time())
            await asyncio.sleep(due - loop.time())

    async def _scrape_once(self, endpoint: Endpoint) -> None:
        try:
            text = await self._fetch(endpoint)
            extractor = self._extractors[engine_kind(endpoint.engine)]
            metrics = extractor.extract(text, self._datastore.clock.now())
        except MetricsError as exc:
            self._failed(endpoint, ScrapeFailure("parse", str(exc)))
        except ScrapeFailure as exc:
            self._failed(endpoint, exc)
        except Exception as exc:  # a bug here must not end this endpoint's polling
            log.exception("metrics scrape of %s raised unexpectedly", endpoint.name)
            self._failed(endpoint, ScrapeFailure("internal", repr(exc)))
        else:
            self._datastore.update_metrics(endpoint.name, metrics)
            if self._failing.pop(endpoint.name, None) is not None:
                log.info("metrics scrape of %s (%s) recovered", endpoint.name, self.url(endpoint))

    async def _fetch(self, endpoint: Endpoint) -> str:
        """The page's text, or ``ScrapeFailure`` with reason timeout / connect / http / body."""
        assert self._session is not None
        try:
            async with self._session.get(self.url(endpoint)) as resp:
                if resp.status != 200:
                    raise ScrapeFailure("http", f"HTTP {resp.status} {resp.reason or ''}".strip())
                chunks: list[bytes] = []
                size = 0
                async for chunk in resp.content.iter_any():
                    size += len(chunk)
                    if size > MAX_BODY_BYTES:
                        raise ScrapeFailure("body", f"body larger than {MAX_BODY_BYTES} bytes")
                    chunks.append(chunk)
        except TimeoutError:
            raise ScrapeFailure("timeout", f"no complete response within {self._timeout.total}s") from None
        except (aiohttp.ClientConnectorError, ConnectionError) as exc:
            raise ScrapeFailure("connect", str(exc) or type(exc).__name__) from None
        except aiohttp.ClientError as exc:
            raise ScrapeFailure("http", str(exc) or type(exc).__name__) from None
        return b"".join(chunks).decode("utf-8", errors="replace")

    def _failed(self, endpoint: Endpoint, failure: ScrapeFailure) -> None:
        self._datastore.record_scrape_error(endpoint.name, str(failure))
        self._errors.labels(SOURCE_TYPE, failure.reason).inc()
        if self._failing.get(endpoint.name) != failure.reason:
            self._failing[endpoint.name] = failure.reason
            log.warning("metrics scrape of %s (%s) failing: %s", endpoint.name, self.url(endpoint), failure)

    def url(self, endpoint: Endpoint) -> str:
        return self.target.url(endpoint)
