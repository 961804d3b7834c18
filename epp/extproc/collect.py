"""Collecting one request as Envoy sends it over ext_proc; shared by the picker and the body-based router.

Both must see the whole body before they answer the request headers, so both accept the two body modes
that hold the headers back: BUFFERED(_PARTIAL) (headers answered empty at once, exactly one body
message, the header mutation rides on the body answer) and FULL_DUPLEX_STREAMED (chunks collected, then
the headers answer plus the body as streamed chunks). A body-less request is answered on its headers.
A request with a body in mode NONE or STREAMED cannot be routed on its body: it gets a 500 naming the
misconfiguration instead of being routed blind.

Subclasses supply the routing (``route_headers_only``, ``route_body``) and the refusal (``reject``);
this class owns header reading, mode reading, body buffering with the size limit, trailers and the phase.
"""

from __future__ import annotations

import asyncio
import enum
import logging
from collections.abc import Callable
from typing import Any, Generic, Protocol, TypeVar

from envoy.extensions.filters.http.ext_proc.v3.processing_mode_pb2 import ProcessingMode
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb

from epp.extproc import messages
from epp.request import RequestError
from epp.request.body import DEFAULT_MAX_BODY_BYTES, BodyBuffer
from epp.request.headers import REQUEST_ID_HEADER

log = logging.getLogger(__name__)

DUPLEX = ProcessingMode.FULL_DUPLEX_STREAMED
BUFFERED_MODES = (ProcessingMode.BUFFERED, ProcessingMode.BUFFERED_PARTIAL)

Replies = list[pb.ProcessingResponse]


class ProtocolViolation(Exception):
    """Envoy sent a message the ext_proc sequence does not allow here; ends this stream only."""


class Phase(enum.Enum):
    HEADERS = "awaiting request headers"
    BODY = "collecting request body"
    ADMITTING = "waiting for admission (flow control)"
    ROUTED = "routed"
    REJECTED = "answered with an immediate response"


class Cancellable(Protocol):
    def cancel(self) -> None: ...


T = TypeVar("T")


class Deferred(Generic[T]):
    """Replies that wait for an outcome decided later (flow control holds the request until the pool has
    room). The transport awaits ``replies()``; ``resolve`` delivers the outcome. What a stream that ends
    first leaves behind (the ``waiting`` queue entry, or an outcome that was never answered) is released
    by the stream's exchange when it closes (``RequestStream.close``), not here."""

    __slots__ = ("_answer", "_outcome", "_ready", "_future", "waiting")

    def __init__(self, answer: Callable[[T], Replies]) -> None:
        self._answer = answer
        self._ready = False
        self._outcome: T | None = None
        self._future: asyncio.Future[None] | None = None
        self.waiting: Cancellable | None = None

    def resolve(self, outcome: T) -> None:
        self._outcome, self._ready = outcome, True
        if self._future is not None and not self._future.done():
            self._future.set_result(None)

    @property
    def ready(self) -> bool:
        return self._ready

    @property
    def outcome(self) -> T:
        """The resolved outcome (only once ``ready``)."""
        assert self._ready
        return self._outcome  # type: ignore[return-value]

    def then(self, more: Callable[[Replies], Replies]) -> Deferred[T]:
        """Post-process the replies once they exist."""
        answer = self._answer
        self._answer = lambda outcome: more(answer(outcome))
        return self

    def now(self) -> Replies:
        """The replies of a resolved outcome."""
        return self._answer(self.outcome)

    async def replies(self) -> Replies:
        """Wait for the outcome, then its replies; a cancelled wait (the stream ended) just propagates."""
        if not self._ready:
            self._future = asyncio.get_running_loop().create_future()
            await self._future
        return self.now()


class RequestCollector:
    """The request phase of one ext_proc stream, up to the routing decision."""

    #: who needs the body, for the misconfiguration error (e.g. "the endpoint picker")
    component = "the ext_proc server"
    #: OpenAI error ``code`` of that error
    body_mode_code = "body_mode"

    def __init__(self, max_body_bytes: int = DEFAULT_MAX_BODY_BYTES) -> None:
        self.phase = Phase.HEADERS
        self.headers: dict[str, str] = {}
        self.request_id = ""
        self.request_mode: int = DUPLEX
        self.response_mode: int = DUPLEX
        self.body = BodyBuffer(max_body_bytes)

    # -- hooks ----------------------------------------------------------------------------------
    def missing_request_id(self) -> str:
        """The id to use when the request has no ``x-request-id``; empty by default."""
        return ""

    def route_headers_only(self) -> Replies:
        raise NotImplementedError

    def route_body(self, end_of_stream: bool) -> Replies | Deferred[Any]:
        """Route on ``self.body``; ``end_of_stream`` is false when trailers, not a data frame, ended it."""
        raise NotImplementedError

    def reject(self, error: RequestError) -> Replies:
        """Answer with an immediate response (the subclass counts/logs it); must set ``Phase.REJECTED``."""
        raise NotImplementedError

    # -- request messages -----------------------------------------------------------------------
    def handle_request(self, kind: str, message: pb.ProcessingRequest) -> Replies | Deferred[Any] | None:
        """Replies to a request-phase message, or ``None`` when ``kind`` belongs to the response phase."""
        if kind == "request_headers":
            return self._request_headers(message)
        if kind == "request_body":
            return self._request_body(message.request_body)
        if kind == "request_trailers":
            return self._request_trailers()
        return None

    def _request_headers(self, message: pb.ProcessingRequest) -> Replies:
        if self.phase is not Phase.HEADERS:
            raise ProtocolViolation(f"request_headers received while {self.phase.value}")
        self.read_headers(message)
        if message.HasField("protocol_config"):
            self.request_mode = message.protocol_config.request_body_mode
            self.response_mode = message.protocol_config.response_body_mode
        if message.request_headers.end_of_stream:
            return self.route_headers_only()
        if self.request_mode not in (DUPLEX, *BUFFERED_MODES):
            return self.reject(self._body_mode_error())
        self.phase = Phase.BODY
        return [messages.continue_request_headers()] if self.request_mode in BUFFERED_MODES else []

    def read_headers(self, message: pb.ProcessingRequest) -> None:
        """Headers (lower-cased names) and the request id of a ``request_headers`` message."""
        self.headers = messages.header_dict(message.request_headers.headers)
        self.request_id = self.headers.get(REQUEST_ID_HEADER) or self.missing_request_id()

    def _request_body(self, body: pb.HttpBody) -> Replies | Deferred[Any]:
        if self.phase is not Phase.BODY:
            raise ProtocolViolation(f"request_body received while {self.phase.value}")
        try:
            self.body.append(body.body)
        except RequestError as error:
            return self.reject(error)
        # BUFFERED(_PARTIAL) sends exactly one body message, whatever its end_of_stream says.
        if body.end_of_stream or self.request_mode in BUFFERED_MODES:
            return self.route_body(end_of_stream=True)
        return []

    def _request_trailers(self) -> Replies | Deferred[Any]:
        if self.phase is Phase.BODY:  # trailers end a body whose last data frame had no end_of_stream
            replies = self.route_body(end_of_stream=False)
            if isinstance(replies, Deferred):
                return replies.then(self._trailers_once_routed)
            return self._trailers_once_routed(replies)
        if self.phase is Phase.ROUTED:
            return [messages.trailers_reply(response=False)]
        raise ProtocolViolation(f"request_trailers received while {self.phase.value}")

    def _trailers_once_routed(self, replies: Replies) -> Replies:
        if self.phase is Phase.ROUTED:  # after an immediate response Envoy expects nothing more
            replies.append(messages.trailers_reply(response=False))
        return replies

    def _body_mode_error(self) -> RequestError:
        mode = ProcessingMode.BodySendMode.Name(self.request_mode)
        log.error("request %s: ext_proc request body mode %s hides the body from %s",
                  self.request_id or "-", mode, self.component)
        return RequestError(
            500, f"gateway misconfiguration: {self.component} needs the request body BUFFERED or "
                 f"FULL_DUPLEX_STREAMED, not {mode}", error_type="server_error", code=self.body_mode_code,
        )
