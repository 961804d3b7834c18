"""Kubernetes token auth for ``/metrics`` (``--metrics-endpoint-auth``), as the reference picker does it.

The reference wraps its metrics handler in controller-runtime's ``WithAuthenticationAndAuthorization``:
the scraper's bearer token goes to the kube-apiserver as a ``TokenReview`` (authentication.k8s.io/v1);
the user it names must then pass a ``SubjectAccessReview`` (authorization.k8s.io/v1) for the
non-resource URL (``/metrics``) with the request's verb (``get``). No or an unknown token → 401, a
user without the grant → 403, the API unreachable or refusing the review → 500 (nothing is cached, the
next scrape asks again). Decisions are cached like the delegating authenticator/authorizer the
reference configures — tokens for a minute either way, grants for five minutes, denials for 30 s —
so a Prometheus scraping every few seconds costs the API two reviews per token and window, not two per
scrape. The caches are bounded (least recently used entries go first) and keyed by a SHA-256 of the
token, and tokens never reach a log line.

The picker needs ``create`` on ``tokenreviews`` and ``subjectaccessreviews`` (manifests/base); scrapers
need ``get`` on the non-resource URL ``/metrics`` (the ``metrics-reader`` ClusterRole).
"""

from __future__ import annotations

import hashlib
import logging
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import aiohttp

from epp._util.clock import Clock, WallClock
from epp._util.lifecycle import AsyncService
from epp.discovery.kube_api import KubeApi, KubeApiError, load_api_client

log = logging.getLogger("epp.metrics.auth")

TOKEN_REVIEWS = "/apis/authentication.k8s.io/v1/tokenreviews"
ACCESS_REVIEWS = "/apis/authorization.k8s.io/v1/subjectaccessreviews"
K = TypeVar("K")
V = TypeVar("V")


class TTLCache(Generic[K, V]):
    """At most ``max_entries`` values, each valid until its own deadline; the least recently used goes first."""

    def __init__(self, clock: Clock, max_entries: int) -> None:
        self._clock = clock
        self._max = max_entries
        self._entries: OrderedDict[K, tuple[float, V]] = OrderedDict()

    def get(self, key: K) -> tuple[bool, V | None]:
        """(hit, value); an expired entry is dropped and counts as a miss."""
        entry = self._entries.get(key)
        if entry is None:
            return False, None
        if entry[0] <= self._clock.now():
            del self._entries[key]
            return False, None
        self._entries.move_to_end(key)
        return True, entry[1]

    def put(self, key: K, value: V, ttl: float) -> None:
        self._entries[key] = (self._clock.now() + ttl, value)
        self._entries.move_to_end(key)
        while len(self._entries) > self._max:
            self._entries.popitem(last=False)

    def __len__(self) -> int:
        return len(self._entries)


@dataclass(frozen=True, slots=True)
class User:
    """The identity a TokenReview returned; the SubjectAccessReview asks about exactly this identity."""

    name: str
    uid: str = ""
    groups: tuple[str, ...] = ()
    extra: tuple[tuple[str, tuple[str, ...]], ...] = ()

    @classmethod
    def from_status(cls, user: dict[str, Any]) -> User:
        extra = user.get("extra") or {}
        return cls(str(user.get("username", "")), str(user.get("uid", "")),
                   tuple(str(g) for g in user.get("groups") or ()),
                   tuple(sorted((str(k), tuple(str(x) for x in v or ())) for k, v in extra.items())))


@dataclass(frozen=True, slots=True)
class Verdict:
    """The HTTP answer for one request: ``status`` 200 lets it through, anything else is the reply."""

    status: int
    message: str = ""


ALLOWED = Verdict(200)
UNAUTHORIZED = Verdict(401, "Unauthorized")
AUTHN_FAILED = Verdict(500, "Authentication failed")


class AuthUnavailable(Exception):
    """The API server could not give a decision (unreachable, timed out, refused the review)."""


def bearer_token(header: str | None) -> str:
    """The token of ``Authorization: Bearer <token>`` (scheme case-insensitive), else ""."""
    parts = (header or "").strip().split(" ")
    return parts[1] if len(parts) >= 2 and parts[0].lower() == "bearer" else ""


def _token_key(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


class KubeMetricsAuth(AsyncService):
    """Reviews ``/metrics`` requests with the kube-apiserver; ``start`` loads the client like discovery
    does (``--kubeconfig``, ``$KUBECONFIG``, in-cluster, ``~/.kube/config``) and raises ``KubeConfigError``
    (a ``ValueError``) when there is none."""

    def __init__(
        self, kubeconfig: str = "", *, clock: Clock | None = None, token_ttl: float = 60.0, allow_ttl: float = 300.0,
        deny_ttl: float = 30.0, max_entries: int = 4096, timeout: float = 10.0,
    ) -> None:
        clock = clock or WallClock()
        self.kubeconfig = kubeconfig
        self.token_ttl, self.allow_ttl, self.deny_ttl, self.timeout = token_ttl, allow_ttl, deny_ttl, timeout
        self._users: TTLCache[bytes, User | None] = TTLCache(clock, max_entries)
        self._grants: TTLCache[tuple[User, str, str], bool] = TTLCache(clock, max_entries)
        self._api: KubeApi | None = None

    async def start(self) -> None:
        self._api = KubeApi(await load_api_client(self.kubeconfig))

    async def stop(self) -> None:
        api, self._api = self._api, None
        if api is not None:
            await api.close()

    async def check(self, authorization: str | None, method: str, path: str) -> Verdict:
        """The verdict for a request with this ``Authorization`` header, HTTP method and URL path."""
        token = bearer_token(authorization)
        if not token:
            return UNAUTHORIZED
        try:
            user = await self._authenticate(token)
        except AuthUnavailable as exc:
            log.error("metrics auth: TokenReview failed, answering 500: %s", exc)
            return AUTHN_FAILED
        if user is None:
            log.debug("metrics auth: token not authenticated")
            return UNAUTHORIZED
        verb = method.lower()
        try:
            allowed = await self._authorize(user, verb, path)
        except AuthUnavailable as exc:
            log.error("metrics auth: SubjectAccessReview for user %s failed, answering 500: %s", user.name, exc)
            return Verdict(500, f"Authorization for user {user.name} failed")
        if not allowed:
            log.debug("metrics auth: %s %s denied for user %s", verb, path, user.name)
            return Verdict(403, f"Authorization denied for user {user.name}")
        return ALLOWED

    async def _authenticate(self, token: str) -> User | None:
        key = _token_key(token)
        hit, user = self._users.get(key)
        if hit:
            return user
        review = await self._review(TOKEN_REVIEWS, {
            "apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview", "spec": {"token": token}})
        status = review.get("status") or {}
        user = User.from_status(status.get("user") or {}) if status.get("authenticated") is True else None
        self._users.put(key, user, self.token_ttl)
        return user

    async def _authorize(self, user: User, verb: str, path: str) -> bool:
        key = (user, verb, path)
        hit, allowed = self._grants.get(key)
        if hit:
            return bool(allowed)
        spec: dict[str, Any] = {"user": user.name, "groups": list(user.groups),
                                "nonResourceAttributes": {"path": path, "verb": verb}}
        if user.uid:
            spec["uid"] = user.uid
        if user.extra:
            spec["extra"] = {k: list(v) for k, v in user.extra}
        review = await self._review(ACCESS_REVIEWS, {
            "apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview", "spec": spec})
        allowed = (review.get("status") or {}).get("allowed") is True
        self._grants.put(key, allowed, self.allow_ttl if allowed else self.deny_ttl)
        return allowed

    async def _review(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        """POST one review; every way of not getting an answer becomes :class:`AuthUnavailable`."""
        if self._api is None:
            raise AuthUnavailable("not started")
        try:
            return await self._api.request("POST", path, body=body, timeout=self.timeout)
        except KubeApiError as exc:
            hint = ("; the picker's ServiceAccount needs create on tokenreviews and subjectaccessreviews "
                    "(manifests/base/metrics-auth.yaml)") if exc.status == 403 else ""
            raise AuthUnavailable(f"kube-apiserver answered {str(exc)[:300]}{hint}") from None
        except (aiohttp.ClientError, TimeoutError, OSError, ValueError) as exc:
            raise AuthUnavailable(f"kube-apiserver unreachable: {type(exc).__name__}: {exc}") from None
