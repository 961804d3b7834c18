"""A small informer: keep a local copy of one Kubernetes collection current through list-then-watch.

The loop, per collection:

1. **list** (a consistent read) → ``handler.replace(objects)``; remember the list's resourceVersion;
2. **watch** from that resourceVersion with bookmarks → ``handler.apply(type, object)`` per event, and
   advance the resourceVersion on every event *and* bookmark;
3. the stream ends (server timeout, dropped connection, idle timeout) → watch again from the last
   resourceVersion — no relist, so nothing is lost and nothing is re-applied;
4. ``410 Gone`` (an ERROR event or an HTTP 410) means that resourceVersion was compacted away → relist;
5. any other failure (connection refused, 5xx, timeouts) → back off exponentially with jitter
   (``initial_backoff`` … ``max_backoff``) and retry the watch; the handler keeps what it has, so the
   datastore keeps serving the last known endpoints while the API server is unreachable;
6. every ``resync_period`` seconds the reflector relists anyway, to heal from any missed event;
7. ``404`` on list means the resource type is not installed (a missing CRD): logged once, retried
   every ``absent_retry`` seconds, and the handler is told the collection is empty.

Reachability changes are reported through ``on_reachable(bool)`` (logged by the caller, exported as
a metric). Time and randomness are injected (``sleep``, ``now``, ``rng``) so tests need no patching.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

from epp.discovery.kube_api import JSON, KubeApi, KubeApiError, Resource

log = logging.getLogger(__name__)


class ReflectorHandler(Protocol):
    """Receives a collection's state: a full replacement after each list, then single events."""

    def replace(self, objects: list[JSON]) -> None: ...

    def apply(self, event_type: str, obj: JSON) -> None: ...


@dataclass(frozen=True, slots=True)
class ReflectorTiming:
    """Seconds. Defaults follow client-go's reflector (watch 5–10 min, backoff 0.8 s → 30 s)."""

    watch_timeout: int = 300
    idle_timeout: float = 90.0
    initial_backoff: float = 0.8
    max_backoff: float = 30.0
    resync_period: float = 600.0
    absent_retry: float = 30.0


class Reflector:
    """List-then-watch one :class:`Resource` (optionally label/field-selected) into a handler."""

    def __init__(
        self,
        api: KubeApi,
        resource: Resource,
        handler: ReflectorHandler,
        *,
        label_selector: str = "",
        field_selector: str = "",
        timing: ReflectorTiming | None = None,
        on_reachable: Callable[[bool], None] | None = None,
        on_relist: Callable[[str], None] | None = None,
        sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
        now: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
    ) -> None:
        self.api = api
        self.resource = resource
        self.handler = handler
        self.label_selector = label_selector
        self.field_selector = field_selector
        self.timing = timing or ReflectorTiming()
        self._on_reachable = on_reachable or (lambda _up: None)
        self._on_relist = on_relist or (lambda _reason: None)
        self._sleep = sleep
        self._now = now
        self._rng = rng or random.Random()
        self.resource_version = ""
        self.listed = asyncio.Event()
        self.absent = False
        self._reachable: bool | None = None
        self._established_at: float | None = None

    def _set_reachable(self, up: bool) -> None:
        if self._reachable != up:
            if up and self._reachable is False:
                log.warning("%s: API server reachable again", self.resource)
            self._reachable = up
            self._on_reachable(up)

    async def run(self) -> None:
        """Run until cancelled. Never raises except ``CancelledError``."""
        backoff = self.timing.initial_backoff
        relist_reason = "initial"
        listed_at = self._now()
        while True:
            try:
                if relist_reason:
                    await self._list(relist_reason)
                    relist_reason = ""
                    listed_at = self._now()
                if self.absent:
                    await self._sleep(self.timing.absent_retry)
                    relist_reason = "absent"
                    continue
                await self._watch_until(listed_at + self.timing.resync_period)
                backoff = self.timing.initial_backoff
                if self._now() >= listed_at + self.timing.resync_period:
                    relist_reason = "resync"
            except KubeApiError as err:
                if err.status == 410:
                    log.info("%s: resourceVersion %s expired (410 Gone); relisting", self.resource,
                             self.resource_version)
                    relist_reason = "gone"
                    continue
                backoff = await self._failed(err, backoff)
            except Exception as err:  # noqa: BLE001 - connection errors of any kind must not end discovery
                if self._stream_was_healthy():
                    # A long-lived watch dropped mid-stream: resume from the last resourceVersion now.
                    log.info("%s: watch dropped (%s); resuming from %s", self.resource, err or type(err).__name__,
                             self.resource_version)
                    backoff = self.timing.initial_backoff
                    continue
                backoff = await self._failed(err, backoff)

    def _stream_was_healthy(self) -> bool:
        established, self._established_at = self._established_at, None
        return established is not None and self._now() - established >= self.timing.initial_backoff

    async def _failed(self, err: BaseException, backoff: float) -> float:
        if self._reachable is not False:
            log.warning("%s: API server unreachable (%s); keeping last known state", self.resource, err)
        self._set_reachable(False)
        await self._sleep(backoff * (0.5 + self._rng.random()))
        return min(backoff * 2, self.timing.max_backoff)

    async def _list(self, reason: str) -> None:
        try:
            body = await self.api.list(self.resource, self.label_selector, self.field_selector)
        except KubeApiError as err:
            if err.status != 404:
                raise
            if not self.absent:
                log.warning("%s: resource type not served (404); retrying every %ss", self.resource,
                            self.timing.absent_retry)
            self.absent = True
            self._set_reachable(True)
            self.handler.replace([])
            self.listed.set()
            return
        if self.absent:
            log.info("%s: resource type is now served", self.resource)
        self.absent = False
        self._set_reachable(True)
        self.resource_version = str((body.get("metadata") or {}).get("resourceVersion", ""))
        items = body.get("items") or []
        self.handler.replace([item for item in items if isinstance(item, dict)])
        self._on_relist(reason)
        self.listed.set()

    async def _watch_until(self, deadline: float) -> None:
        jittered = int(self.timing.watch_timeout * (1 + self._rng.random()))
        timeout = max(1, min(jittered, int(deadline - self._now())))
        self._established_at = None
        stream = self.api.watch(
            self.resource,
            self.resource_version,
            label_selector=self.label_selector,
            field_selector=self.field_selector,
            timeout_seconds=timeout,
            idle_timeout=self.timing.idle_timeout,
            on_open=self._opened,
        )
        async for event in stream:
            event_type = str(event.get("type", ""))
            obj = event.get("object")
            if not isinstance(obj, dict):
                continue
            if event_type != "BOOKMARK":
                self.handler.apply(event_type, obj)
            version = (obj.get("metadata") or {}).get("resourceVersion")
            if version:
                self.resource_version = str(version)
        self._established_at = None

    def _opened(self) -> None:
        self._established_at = self._now()
        self._set_reachable(True)
