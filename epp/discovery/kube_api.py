"""Raw JSON access to the Kubernetes API through ``kubernetes_asyncio``'s transport.

Why raw calls and not ``kubernetes_asyncio.watch.Watch``: ``Watch`` turns every event into generated
model objects (slow for 1,000 pods: see bench/RESULTS.md), creates its own ``ApiClient`` from the
process-wide default configuration, and on a ``410 Gone`` ERROR event silently retries *once with the
same too-old resourceVersion* instead of telling the caller to relist. Here every call goes through
``ApiClient.call_api(..., _preload_content=False)`` — so authentication (bearer tokens, in-cluster
token refresh, client certificates, exec plugins) stays the client's job — and the body is decoded
with orjson. Non-2xx answers become :class:`KubeApiError` carrying the HTTP status; watch ERROR events
become the same error with the Status ``code`` (410 → relist, see ``reflector.py``).
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson
from kubernetes_asyncio.client import ApiClient, Configuration
import yaml
from kubernetes_asyncio.config import ConfigException, load_incluster_config, load_kube_config

JSON = dict[str, Any]


class KubeApiError(Exception):
    """The API server answered with a failure ``status`` (HTTP code, or the ``code`` of a watch ERROR)."""

    def __init__(self, status: int, reason: str, message: str = "") -> None:
        super().__init__(f"{status} {reason}: {message}".strip())
        self.status = status
        self.reason = reason
        self.message = message


@dataclass(frozen=True, slots=True)
class Resource:
    """A namespaced resource collection: ``group`` "" is the core API (``/api/v1``)."""

    group: str
    version: str
    plural: str
    namespace: str

    @property
    def path(self) -> str:
        prefix = f"/api/{self.version}" if not self.group else f"/apis/{self.group}/{self.version}"
        return f"{prefix}/namespaces/{self.namespace}/{self.plural}"

    def __str__(self) -> str:
        gv = f"{self.group}/{self.version}" if self.group else self.version
        return f"{self.plural}.{gv} in {self.namespace}"


def _status_error(status: int, body: bytes) -> KubeApiError:
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        return KubeApiError(status, "Error", body[:200].decode("utf-8", "replace"))
    if not isinstance(data, dict):
        return KubeApiError(status, "Error", str(data)[:200])
    return KubeApiError(status, str(data.get("reason", "")), str(data.get("message", "")))


class KubeApi:
    """Thin JSON client: list/watch collections and get/create/replace single objects.

    Owns nothing but the ``ApiClient`` handed in; :meth:`close` closes it.
    """

    def __init__(self, client: ApiClient) -> None:
        self._client = client

    async def close(self) -> None:
        await self._client.close()

    async def _call(
        self, method: str, path: str, query: list[tuple[str, str]], body: JSON | None, timeout: Any
    ) -> aiohttp.ClientResponse:
        response: aiohttp.ClientResponse = await self._client.call_api(
            path,
            method,
            query_params=query,
            header_params={"Accept": "application/json", "Content-Type": "application/json"},
            body=body,
            auth_settings=["BearerToken"],
            _preload_content=False,
            _request_timeout=timeout,
        )
        return response

    async def request(
        self, method: str, path: str, query: list[tuple[str, str]] | None = None, body: JSON | None = None,
        timeout: float = 30.0,
    ) -> JSON:
        """One request → decoded JSON object; non-2xx → :class:`KubeApiError`."""
        response = await self._call(method, path, query or [], body, timeout)
        async with response:
            data = await response.read()
            if not 200 <= response.status < 300:
                raise _status_error(response.status, data)
        decoded = orjson.loads(data)
        if not isinstance(decoded, dict):
            raise KubeApiError(response.status, "BadResponse", "expected a JSON object")
        return decoded

    async def list(self, resource: Resource, label_selector: str = "", field_selector: str = "") -> JSON:
        """The full collection at the newest resourceVersion (a consistent read)."""
        query = _selectors(label_selector, field_selector)
        return await self.request("GET", resource.path, query)

    async def watch(
        self,
        resource: Resource,
        resource_version: str,
        *,
        label_selector: str = "",
        field_selector: str = "",
        timeout_seconds: int = 300,
        idle_timeout: float = 90.0,
        on_open: Callable[[], None] | None = None,
    ) -> AsyncIterator[JSON]:
        """Yield watch events (``{"type", "object"}``) after ``resource_version``, bookmarks included.

        Ends when the server closes the stream (normal at ``timeout_seconds``). ``idle_timeout`` bounds
        the wait for any line, so a silently dead connection is noticed; the server sends bookmarks
        meanwhile. ``on_open`` is called once the server accepted the watch. ERROR events raise :class:`KubeApiError` with the Status code (410 = too old).
        """
        query = _selectors(label_selector, field_selector) + [
            ("watch", "true"),
            ("allowWatchBookmarks", "true"),
            ("resourceVersion", resource_version),
            ("timeoutSeconds", str(timeout_seconds)),
        ]
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=10.0, sock_read=idle_timeout)
        response = await self._call("GET", resource.path, query, None, timeout)
        async with response:
            if not 200 <= response.status < 300:
                raise _status_error(response.status, await response.read())
            if on_open is not None:
                on_open()
            async for line in response.content:
                if not line.strip():
                    continue
                event = orjson.loads(line)
                if event.get("type") == "ERROR":
                    status = event.get("object") or {}
                    raise KubeApiError(
                        int(status.get("code", 500)), str(status.get("reason", "")), str(status.get("message", ""))
                    )
                yield event


def _selectors(label_selector: str, field_selector: str) -> list[tuple[str, str]]:
    query: list[tuple[str, str]] = []
    if label_selector:
        query.append(("labelSelector", label_selector))
    if field_selector:
        query.append(("fieldSelector", field_selector))
    return query


async def load_api_client(kubeconfig: str = "") -> ApiClient:
    """An ``ApiClient`` for this process, resolved like controller-runtime does.

    Order: ``kubeconfig`` argument (``--kubeconfig``), ``$KUBECONFIG``, in-cluster service account
    (when ``$KUBERNETES_SERVICE_HOST`` is set), then ``~/.kube/config``. The configuration object is
    private to the returned client: the library's process-wide default is left untouched.
    Raises :class:`KubeConfigError` (a ``ValueError``) naming the file when it is missing or unusable,
    rather than the library's traceback (which, for a missing file, complains about ``current-context``).
    """
    configuration = Configuration()
    path = kubeconfig or os.environ.get("KUBECONFIG", "").split(os.pathsep)[0]
    try:
        if not path and os.environ.get("KUBERNETES_SERVICE_HOST"):
            load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]  # unannotated
        else:
            if path and not os.path.isfile(path):
                raise KubeConfigError(f"kubeconfig {path}: no such file")
            await load_kube_config(config_file=path or None, client_configuration=configuration, persist_config=False)
    except (ConfigException, yaml.YAMLError, OSError) as exc:
        where = f"kubeconfig {path}" if path else "in-cluster or default kubeconfig"
        raise KubeConfigError(f"{where}: {exc}") from None
    return ApiClient(configuration=configuration)


class KubeConfigError(ValueError):
    """No usable Kubernetes client configuration (``epp serve`` exits 2 with this message)."""
