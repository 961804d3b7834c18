"""A small fake kube-apiserver on 127.0.0.1, speaking the real HTTP protocol to the real client.

What it implements (only what epp uses, but the way the API server does it):

* namespaced collections under ``/api/v1`` and ``/apis/<group>/<version>``: list (label selectors with
  ``=``, ``==``, ``!=``, ``key``, ``!key``; field selector ``metadata.name=``), get, create (409
  AlreadyExists), replace (409 Conflict when ``metadata.resourceVersion`` is stale), delete;
* one global, increasing resourceVersion; every write is logged for watches;
* watch: chunked newline-delimited JSON events after the requested resourceVersion (replayed from the
  log, then live), label-selector transitions as real watches do them (an update that leaves the
  selector is a DELETED, one that enters it an ADDED), BOOKMARK events every ``bookmark_interval``
  when ``allowWatchBookmarks=true``, and the stream ends at ``timeoutSeconds``;
* ``410 Gone`` for resourceVersions older than :meth:`compact`: as an ERROR event carrying a Status
  with ``code: 410`` (``gone_mode="event"``, what kube-apiserver does for watches) or as an HTTP 410
  (``gone_mode="http"``), on watches and on lists that ask for an exact old version;
* 404 NotFound Status for resource types not served (a CRD that is not installed); :meth:`serve`
  installs or removes one;
* bearer-token authentication (401 without it);
* delegated auth, as a picker's ``/metrics`` uses it: ``TokenReview`` (authentication.k8s.io/v1) answers
  from :attr:`tokens` (token → user info), ``SubjectAccessReview`` (authorization.k8s.io/v1) for
  non-resource URLs from :attr:`grants` (user or group → {(verb, path)}); :attr:`review_failure` makes
  both answer with that HTTP status instead (an API server in trouble, or a reviewer without RBAC);
* faults: :meth:`drop_watches` aborts every open watch mid-stream (no terminating chunk), :meth:`stop`
  takes the server down (state kept) and :meth:`start` brings it back on the same port.

Tests mutate state with :meth:`put` / :meth:`delete` (and :func:`make_pod`), exactly as a controller
writing to the API would.
"""

from __future__ import annotations

import asyncio
import copy
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from aiohttp import web

JSON = dict[str, Any]
Collection = tuple[str, str, str, str]  # group, version, plural, namespace

DEFAULT_SERVED = frozenset({
    ("", "v1", "pods"),
    ("inference.networking.k8s.io", "v1", "inferencepools"),
    ("inference.networking.x-k8s.io", "v1alpha2", "inferencepools"),
    ("llm-d.ai", "v1alpha2", "inferenceobjectives"),
    ("inference.networking.x-k8s.io", "v1alpha2", "inferenceobjectives"),
    ("llm-d.ai", "v1alpha2", "inferencemodelrewrites"),
    ("inference.networking.x-k8s.io", "v1alpha2", "inferencemodelrewrites"),
    ("coordination.k8s.io", "v1", "leases"),
})
_DROP = object()
_REVIEWS = {"/apis/authentication.k8s.io/v1/tokenreviews": "TokenReview",
            "/apis/authorization.k8s.io/v1/subjectaccessreviews": "SubjectAccessReview"}


def make_pod(
    name: str, ip: str | None = "10.0.0.1", *, ready: bool = True, namespace: str = "default",
    labels: Mapping[str, str] | None = None, annotations: Mapping[str, str] | None = None,
    deleting: bool = False,
) -> JSON:
    """A Pod object as the API returns it (the fields epp reads, plus realistic neighbours)."""
    meta: JSON = {"name": name, "namespace": namespace, "labels": dict(labels or {"app": "vllm"}),
                  "uid": f"uid-{name}"}
    if annotations:
        meta["annotations"] = dict(annotations)
    if deleting:
        meta["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    status: JSON = {"phase": "Running", "conditions": [
        {"type": "PodScheduled", "status": "True"},
        {"type": "Ready", "status": "True" if ready else "False"},
    ]}
    if ip:
        status["podIP"] = ip
    return {"apiVersion": "v1", "kind": "Pod", "metadata": meta,
            "spec": {"containers": [{"name": "vllm", "image": "vllm/vllm-openai"}]}, "status": status}


def make_pool(name: str, selector: Mapping[str, str], ports: list[int], *, namespace: str = "default",
              version: str = "v1") -> JSON:
    """An InferencePool in v1 (``inference.networking.k8s.io``) or v1alpha2 (x-k8s.io) shape."""
    if version == "v1":
        spec: JSON = {"selector": {"matchLabels": dict(selector)}, "targetPorts": [{"number": p} for p in ports],
                      "endpointPickerRef": {"name": "epp", "port": {"number": 9002}}}
        api_version = "inference.networking.k8s.io/v1"
    else:
        spec = {"selector": dict(selector), "targetPortNumber": ports[0], "extensionRef": {"name": "epp"}}
        api_version = "inference.networking.x-k8s.io/v1alpha2"
    return {"apiVersion": api_version, "kind": "InferencePool",
            "metadata": {"name": name, "namespace": namespace}, "spec": spec}


def make_objective(name: str, pool: str, priority: int | None, *, group: str = "llm-d.ai",
                   namespace: str = "default") -> JSON:
    spec: JSON = {"poolRef": {"name": pool, "group": "inference.networking.k8s.io"}}
    if priority is not None:
        spec["priority"] = priority
    return {"apiVersion": f"{group}/v1alpha2", "kind": "InferenceObjective",
            "metadata": {"name": name, "namespace": namespace}, "spec": spec}


def _timestamp(seconds: int) -> str:
    """RFC 3339 (UTC, whole seconds) as the API server writes ``creationTimestamp``."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(1_767_225_600 + seconds))  # from 2026-01-01


def make_model_rewrite(name: str, pool: str, rules: list[JSON], *, group: str = "llm-d.ai",
                       namespace: str = "default", created: str | None = None) -> JSON:
    metadata: JSON = {"name": name, "namespace": namespace}
    if created is not None:
        metadata["creationTimestamp"] = created
    return {"apiVersion": f"{group}/v1alpha2", "kind": "InferenceModelRewrite", "metadata": metadata,
            "spec": {"poolRef": {"name": pool, "group": "inference.networking.k8s.io"}, "rules": rules}}


def collection_of(obj: Mapping[str, Any]) -> Collection:
    group, _, version = str(obj["apiVersion"]).rpartition("/")
    plural = str(obj["kind"]).lower() + "s"
    return group, version, plural, str(obj["metadata"].get("namespace", "default"))


def _label_match(selector: str, labels: Mapping[str, str]) -> bool:
    for term in (t.strip() for t in selector.split(",") if t.strip()):
        if "!=" in term:
            key, value = term.split("!=", 1)
            if labels.get(key.strip()) == value.strip():
                return False
        elif "=" in term:
            key, value = term.replace("==", "=").split("=", 1)
            if labels.get(key.strip()) != value.strip():
                return False
        elif term.startswith("!"):
            if term[1:] in labels:
                return False
        elif term not in labels:
            return False
    return True


@dataclass(eq=False)
class _Watch:
    collection: Collection
    label_selector: str
    name: str
    queue: asyncio.Queue[Any] = field(default_factory=asyncio.Queue)

    def matches(self, obj: Mapping[str, Any] | None) -> bool:
        if obj is None:
            return False
        meta = obj.get("metadata") or {}
        if self.name and meta.get("name") != self.name:
            return False
        return _label_match(self.label_selector, meta.get("labels") or {})

    def translate(self, event_type: str, obj: JSON, old: JSON | None) -> str | None:
        """The event this watcher sees, given selector transitions (None = not visible)."""
        now, before = self.matches(obj), self.matches(old)
        if event_type == "DELETED":
            return "DELETED" if now else None
        if now:
            return "MODIFIED" if before else "ADDED"
        return "DELETED" if before else None


class FakeKubeApiServer:
    """See the module docstring. All state lives on the instance; nothing is global."""

    def __init__(self, *, token: str = "test-token", bookmark_interval: float = 0.5, gone_mode: str = "event",
                 served: frozenset[tuple[str, str, str]] = DEFAULT_SERVED) -> None:
        self.token = token
        self.bookmark_interval = bookmark_interval
        self.gone_mode = gone_mode
        self.served = set(served)
        self.port = 0
        self.rv = 1
        self.compacted = 0
        self.objects: dict[Collection, dict[str, JSON]] = {}
        self.log: list[tuple[int, Collection, str, JSON, JSON | None]] = []
        self.watches: set[_Watch] = set()
        self.requests: list[tuple[str, str]] = []  # (method, path?query) for assertions
        self.commit_times: dict[int, float] = {}
        self.tokens: dict[str, JSON] = {}  # reviewed token → {"username", "uid", "groups"}
        self.grants: dict[str, set[tuple[str, str]]] = {}  # user or group → {(verb, non-resource path)}
        self.review_failure: int | None = None
        self._runner: web.AppRunner | None = None

    # -- lifecycle -----------------------------------------------------------------------------
    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        """Listen (again) on 127.0.0.1: a free port the first time, the same port afterwards."""
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._dispatch)
        self._runner = web.AppRunner(app, handle_signals=False, access_log=None, shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", self.port, reuse_address=True)
        await site.start()
        if not self.port:
            server = site._server
            assert server is not None and server.sockets  # type: ignore[attr-defined]
            self.port = server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]

    async def stop(self) -> None:
        """Go down: abort open watches, close the listener. Objects and versions survive."""
        self.drop_watches()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> FakeKubeApiServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def write_kubeconfig(self, path: Path, namespace: str = "default") -> Path:
        path.write_text(orjson.dumps({
            "apiVersion": "v1", "kind": "Config", "current-context": "fake",
            "clusters": [{"name": "fake", "cluster": {"server": self.url}}],
            "users": [{"name": "epp", "user": {"token": self.token}}],
            "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "epp", "namespace": namespace}}],
        }).decode())
        return path

    # -- state changes (what controllers and kubelets would do) --------------------------------
    def put(self, obj: JSON) -> JSON:
        """Create or update ``obj`` (by apiVersion/kind/namespace/name); returns the stored copy."""
        return self._write(collection_of(obj), copy.deepcopy(obj))

    def delete(self, obj_or_collection: JSON | Collection, name: str = "") -> None:
        if isinstance(obj_or_collection, dict):
            coll, name = collection_of(obj_or_collection), obj_or_collection["metadata"]["name"]
        else:
            coll = obj_or_collection
        old = self.objects.get(coll, {}).pop(name, None)
        if old is not None:
            self.rv += 1
            gone = copy.deepcopy(old)
            gone["metadata"]["resourceVersion"] = str(self.rv)
            self._emit(coll, "DELETED", gone, old)

    def serve(self, group: str, version: str, plural: str, served: bool = True) -> None:
        """Install (or remove) a resource type, like applying or deleting its CRD."""
        (self.served.add if served else self.served.discard)((group, version, plural))

    def compact(self) -> None:
        """Forget history: watches and exact lists from older resourceVersions now get 410 Gone."""
        self.compacted = self.rv
        self.log.clear()

    def review_count(self, kind: str) -> int:
        """How many reviews of ``kind`` (``tokenreviews`` / ``subjectaccessreviews``) were posted."""
        return sum(1 for method, path in self.requests if method == "POST" and path.endswith(f"/{kind}"))

    def drop_watches(self) -> None:
        for watch in list(self.watches):
            watch.queue.put_nowait(_DROP)

    def _write(self, coll: Collection, obj: JSON) -> JSON:
        store = self.objects.setdefault(coll, {})
        name = obj["metadata"]["name"]
        old = store.get(name)
        self.rv += 1
        obj["metadata"]["resourceVersion"] = str(self.rv)
        obj["metadata"].setdefault("namespace", coll[3])
        # Set on create and kept on update, like the API server; one synthetic second per write keeps order.
        created = old["metadata"].get("creationTimestamp") if old else None
        obj["metadata"].setdefault("creationTimestamp", created or _timestamp(self.rv))
        store[name] = obj
        self._emit(coll, "MODIFIED" if old else "ADDED", obj, old)
        return copy.deepcopy(obj)

    def _emit(self, coll: Collection, event_type: str, obj: JSON, old: JSON | None) -> None:
        self.commit_times[self.rv] = time.monotonic()
        self.log.append((self.rv, coll, event_type, obj, old))
        for watch in self.watches:
            if watch.collection == coll:
                visible = watch.translate(event_type, obj, old)
                if visible:
                    watch.queue.put_nowait((visible, obj))

    # -- HTTP ----------------------------------------------------------------------------------
    @staticmethod
    def _status(code: int, reason: str, message: str) -> web.Response:
        body = {"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": code, "reason": reason,
                "message": message}
        return web.Response(status=code, body=orjson.dumps(body), content_type="application/json")

    async def _dispatch(self, request: web.Request) -> web.StreamResponse:
        self.requests.append((request.method, request.path_qs))
        if request.headers.get("Authorization") != f"Bearer {self.token}":
            return self._status(401, "Unauthorized", "Unauthorized")
        if request.method == "POST" and request.path in _REVIEWS:
            return await self._review(request, _REVIEWS[request.path])
        parts = request.path.strip("/").split("/")
        if parts[:2] == ["api", "v1"]:
            group, version, rest = "", "v1", parts[2:]
        elif parts[:1] == ["apis"] and len(parts) >= 3:
            group, version, rest = parts[1], parts[2], parts[3:]
        else:
            return self._status(404, "NotFound", "the server could not find the requested resource")
        if len(rest) not in (3, 4) or rest[0] != "namespaces" or (group, version, rest[2]) not in self.served:
            return self._status(404, "NotFound", "the server could not find the requested resource")
        coll: Collection = (group, version, rest[2], rest[1])
        name = rest[3] if len(rest) == 4 else ""
        if request.method == "GET" and not name:
            if request.query.get("watch") in ("true", "1"):
                return await self._watch(request, coll)
            return self._list(request, coll)
        if request.method == "GET":
            found = self.objects.get(coll, {}).get(name)
            return self._json(found) if found else self._status(404, "NotFound", f'"{name}" not found')
        if request.method == "POST":
            obj = await request.json(loads=orjson.loads)
            if obj["metadata"]["name"] in self.objects.get(coll, {}):
                return self._status(409, "AlreadyExists", f'"{obj["metadata"]["name"]}" already exists')
            return self._json(self._write(coll, obj), 201)
        if request.method == "PUT":
            obj = await request.json(loads=orjson.loads)
            current = self.objects.get(coll, {}).get(name)
            if current is None:
                return self._status(404, "NotFound", f'"{name}" not found')
            if obj["metadata"].get("resourceVersion") != current["metadata"]["resourceVersion"]:
                return self._status(409, "Conflict", "the object has been modified; please apply your changes "
                                    "to the latest version and try again")
            return self._json(self._write(coll, obj))
        if request.method == "DELETE" and name:
            self.delete(coll, name)
            return self._json({"kind": "Status", "status": "Success"})
        return self._status(405, "MethodNotAllowed", request.method)

    async def _review(self, request: web.Request, kind: str) -> web.Response:
        """TokenReview / SubjectAccessReview: the posted object comes back with a ``status`` filled in."""
        if self.review_failure is not None:
            reason = "Forbidden" if self.review_failure == 403 else "InternalError"
            return self._status(self.review_failure, reason, f"{kind} cannot be reviewed right now")
        review = await request.json(loads=orjson.loads)
        spec = review.get("spec") or {}
        if kind == "TokenReview":
            user = self.tokens.get(str(spec.get("token", "")))
            review["status"] = {"authenticated": True, "user": user} if user else \
                {"authenticated": False, "error": "invalid bearer token"}
        else:
            attrs = spec.get("nonResourceAttributes") or {}
            wanted = (attrs.get("verb"), attrs.get("path"))
            subjects = [spec.get("user", ""), *(spec.get("groups") or [])]
            allowed = any(wanted in self.grants.get(s, set()) for s in subjects)
            review["status"] = {"allowed": allowed, **({} if allowed else {"reason": "no RBAC grant"})}
        return self._json(review, 201)

    @staticmethod
    def _json(obj: Any, status: int = 200) -> web.Response:
        return web.Response(status=status, body=orjson.dumps(obj), content_type="application/json")

    def _selected(self, request: web.Request, coll: Collection) -> _Watch:
        field_sel = request.query.get("fieldSelector", "")
        name = field_sel.split("=", 1)[1] if field_sel.startswith("metadata.name=") else ""
        return _Watch(coll, request.query.get("labelSelector", ""), name)

    def _too_old(self, version: str) -> bool:
        return version not in ("", "0") and int(version) < self.compacted

    def _list(self, request: web.Request, coll: Collection) -> web.Response:
        if request.query.get("resourceVersionMatch") == "Exact" and self._too_old(request.query.get("resourceVersion", "")):
            return self._status(410, "Expired", "too old resource version")
        sel = self._selected(request, coll)
        items = [o for o in self.objects.get(coll, {}).values() if sel.matches(o)]
        kind = "PodList" if coll[2] == "pods" else "List"
        return self._json({"kind": kind, "apiVersion": "v1", "metadata": {"resourceVersion": str(self.rv)},
                           "items": items})

    async def _watch(self, request: web.Request, coll: Collection) -> web.StreamResponse:
        since = request.query.get("resourceVersion", "")
        if self._too_old(since) and self.gone_mode == "http":
            return self._status(410, "Expired", f"too old resource version: {since} ({self.compacted})")
        watch = self._selected(request, coll)
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        response.enable_chunked_encoding()
        await response.prepare(request)
        if self._too_old(since):
            status = {"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": 410, "reason": "Expired",
                      "message": f"too old resource version: {since} ({self.compacted})"}
            await response.write(orjson.dumps({"type": "ERROR", "object": status}) + b"\n")
            return response
        if since in ("", "0"):
            backlog = [("ADDED", o) for o in self.objects.get(coll, {}).values() if watch.matches(o)]
        else:
            backlog = []
            for rv, c, event_type, obj, old in self.log:
                visible = watch.translate(event_type, obj, old) if c == coll and rv > int(since) else None
                if visible:
                    backlog.append((visible, obj))
        for item in backlog:
            watch.queue.put_nowait(item)
        self.watches.add(watch)
        try:
            return await self._stream(request, response, watch)
        except ConnectionError:  # the client went away; nothing to tell it
            return response
        finally:
            self.watches.discard(watch)

    async def _stream(self, request: web.Request, response: web.StreamResponse, watch: _Watch) -> web.StreamResponse:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + float(request.query.get("timeoutSeconds", "1800"))
        bookmarks = request.query.get("allowWatchBookmarks") == "true"
        while (remaining := deadline - loop.time()) > 0:
            wait = min(remaining, self.bookmark_interval) if bookmarks else remaining
            try:
                item = await asyncio.wait_for(watch.queue.get(), wait)
            except TimeoutError:
                if bookmarks and loop.time() < deadline:
                    group, version, plural, _ = watch.collection
                    bookmark = {"type": "BOOKMARK", "object": {
                        "kind": plural, "apiVersion": f"{group}/{version}".lstrip("/"),
                        "metadata": {"resourceVersion": str(self.rv)}}}
                    await response.write(orjson.dumps(bookmark) + b"\n")
                continue
            if item is _DROP:
                if request.transport is not None:
                    request.transport.abort()
                return response
            event_type, obj = item
            await response.write(orjson.dumps({"type": event_type, "object": obj}) + b"\n")
        return response
