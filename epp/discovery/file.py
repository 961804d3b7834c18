"""``file-discovery``: endpoint membership from a YAML file, optionally reloaded when it changes.

llm-d's way to run the picker without Kubernetes (bare metal, Slurm, local tests). Plugin parameters
as in the reference: ``path`` (required) and ``watchFile`` (default false).

A bad file at start is fatal (``EndpointsFileError`` naming each bad entry). A bad edit while running
is logged once and the previous membership stays — a typo never empties the pool. Changes are found
by polling the file's identity (device, inode, size, mtime) every ``poll_interval`` seconds; ``os.stat``
follows symlinks, so editors that write a temp file and rename it over the original, and Kubernetes
ConfigMap volumes that swap a ``..data`` symlink, are both seen.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Mapping
from pathlib import Path

from epp._util.lifecycle import AsyncService
from epp.datastore import Datastore, Endpoint
from epp.discovery.endpoints_file import EndpointsFileError, load_endpoints

log = logging.getLogger(__name__)

FILE_DISCOVERY = "file-discovery"
_Signature = tuple[int, int, int, int]


class FileDiscovery(AsyncService):
    """Applies an endpoints file to a datastore with ``replace_all`` and keeps it applied.

    ``await start()`` loads the file (raising ``EndpointsFileError`` if it is unusable), applies it,
    marks the datastore synced and, with ``reload``, starts watching. ``check()`` does one watch step
    synchronously, so tests and callers with their own schedule need no timing.
    """

    def __init__(self, path: str | os.PathLike[str], datastore: Datastore, reload: bool = False, poll_interval: float = 1.0) -> None:
        if poll_interval <= 0:
            raise ValueError(f"poll_interval must be positive, got {poll_interval}")
        self.path = Path(path)
        self.reload = reload
        self._datastore = datastore
        self._poll_interval = poll_interval
        self._signature: _Signature | None = None
        self._failed_signature: _Signature | None = None
        self._missing = False
        self._task: asyncio.Task[None] | None = None

    @classmethod
    def from_parameters(cls, parameters: Mapping[str, object], datastore: Datastore, poll_interval: float = 1.0) -> FileDiscovery:
        """Build from an EndpointPickerConfig plugin entry's ``parameters`` (``path``, ``watchFile``)."""
        path, watch = parameters.get("path"), parameters.get("watchFile", False)
        if not isinstance(path, str) or not path:
            raise ValueError(f"{FILE_DISCOVERY}: 'path' parameter is required and must be a string")
        if not isinstance(watch, bool):
            raise ValueError(f"{FILE_DISCOVERY}: 'watchFile' must be true or false, got {watch!r}")
        unknown = sorted(set(parameters) - {"path", "watchFile"})
        if unknown:
            log.warning("%s: ignoring unknown parameters %s", FILE_DISCOVERY, ", ".join(unknown))
        return cls(path, datastore, reload=watch, poll_interval=poll_interval)

    # -- lifecycle ----------------------------------------------------------------------------
    async def start(self) -> None:
        if self._signature is not None:
            raise RuntimeError(f"{FILE_DISCOVERY} for {self.path} already started")
        signature = self._stat()
        endpoints = load_endpoints(self.path)
        self._apply(endpoints, signature)
        self._datastore.mark_synced()
        log.info("%s: %d endpoints from %s%s", FILE_DISCOVERY, len(endpoints), self.path, " (watching)" if self.reload else "")
        if self.reload:
            self._task = asyncio.get_running_loop().create_task(self._watch(), name=f"{FILE_DISCOVERY}:{self.path}")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    # -- watching ----------------------------------------------------------------------------
    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(self._poll_interval)
            self.check()

    def check(self) -> bool:
        """Reload if the file changed since the last look; True when a new membership was applied."""
        signature = self._stat()
        if signature is None:
            if not self._missing:
                log.error("%s: %s is missing; keeping the current %d endpoints", FILE_DISCOVERY, self.path, len(self._datastore))
            self._missing = True
            return False
        self._missing = False
        if signature in (self._signature, self._failed_signature):
            return False
        try:
            endpoints = load_endpoints(self.path)
        except EndpointsFileError as exc:
            self._failed_signature = signature
            log.error("%s: ignoring the edit, keeping the current %d endpoints: %s", FILE_DISCOVERY, len(self._datastore), exc)
            return False
        self._apply(endpoints, signature)
        log.info("%s: reloaded %d endpoints from %s", FILE_DISCOVERY, len(endpoints), self.path)
        return True

    def _apply(self, endpoints: list[Endpoint], signature: _Signature | None) -> None:
        self._datastore.replace_all(endpoints)
        self._signature = signature
        self._failed_signature = None

    def _stat(self) -> _Signature | None:
        """Identity of the file the path resolves to now; None when it is missing."""
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
