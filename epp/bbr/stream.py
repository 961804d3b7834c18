"""The body-based router's ext_proc state machine for one gRPC stream, free of any gRPC runtime.

The router must see the whole body before the gateway picks a route, so it supports the two body modes
that hold the request headers back: BUFFERED (the contract in docs/deploy.md: headers answered empty at
once, one body message, the header mutation rides on the body answer) and FULL_DUPLEX_STREAMED (GIE's
streaming router: chunks collected, then the headers answer plus the body as streamed chunks).
A body-less request is answered on its headers. A request with a body in mode NONE or STREAMED cannot be
routed on its body: it gets a 500 naming the misconfiguration instead of silently losing its model header.

The response phase is not needed; if the gateway sends it anyway (Envoy sends response headers unless told
to skip them) it is passed through untouched.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Callable

from envoy.extensions.filters.http.ext_proc.v3.processing_mode_pb2 import ProcessingMode
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb

from epp.bbr.router import BodyRouter, RouteHeaders
from epp.extproc import messages
from epp.extproc.stream import BUFFERED_MODES, DUPLEX, REQUEST_ID_HEADER, ProtocolViolation
from epp.request import RequestError
from epp.request.body import DEFAULT_MAX_BODY_BYTES, BodyBuffer
from epp.request.parse import request_path

log = logging.getLogger(__name__)

Replies = list[pb.ProcessingResponse]
ReplyBuilder = Callable[[RouteHeaders], Replies]


class Phase(enum.Enum):
    HEADERS = "awaiting request headers"
    BODY = "collecting request body"
    ROUTED = "routed"
    REJECTED = "answered with an immediate response"


class RouterStream:
    """One request through the router: collect the body, set the routing headers, pass the rest through."""

    def __init__(self, router: BodyRouter, max_body_bytes: int = DEFAULT_MAX_BODY_BYTES) -> None:
        self.router = router
        self.phase = Phase.HEADERS
        self.request_id = ""
        self.headers: dict[str, str] = {}
        self._body = BodyBuffer(max_body_bytes)
        self._request_mode: int = DUPLEX
        self._response_mode: int = DUPLEX

    def handle(self, message: pb.ProcessingRequest) -> Replies:
        kind = message.WhichOneof("request")
        if kind is None:
            raise ProtocolViolation("ProcessingRequest carries no headers, body or trailers")
        if self.phase is Phase.REJECTED:
            return []  # Envoy may still flush messages sent before it saw the immediate response
        if kind == "request_headers":
            return self._request_headers(message)
        if kind == "request_body":
            return self._request_body(message.request_body)
        if kind == "request_trailers":
            return self._request_trailers()
        if self.phase is not Phase.ROUTED:
            raise ProtocolViolation(f"{kind} received while {self.phase.value}")
        if kind == "response_headers":
            return [messages.response_headers_reply({})]
        if kind == "response_body":
            body = message.response_body
            if self._response_mode == DUPLEX:
                return list(messages.streamed_body(body.body, body.end_of_stream, response=True))
            return [messages.body_reply(response=True)]
        return [messages.trailers_reply(response=True)]

    def close(self) -> None:
        """Nothing is held per request once the stream ends."""

    def _request_headers(self, message: pb.ProcessingRequest) -> Replies:
        if self.phase is not Phase.HEADERS:
            raise ProtocolViolation(f"request_headers received while {self.phase.value}")
        for h in message.request_headers.headers.headers:
            self.headers[h.key.lower()] = h.raw_value.decode("latin-1") if h.raw_value else h.value
        self.request_id = self.headers.get(REQUEST_ID_HEADER, "")
        if message.HasField("protocol_config"):
            self._request_mode = message.protocol_config.request_body_mode
            self._response_mode = message.protocol_config.response_body_mode
        if message.request_headers.end_of_stream:
            return self._route(None, lambda out: [messages.request_headers_reply(out.set, remove=out.remove)])
        if self._request_mode not in (DUPLEX, *BUFFERED_MODES):
            mode = ProcessingMode.BodySendMode.Name(self._request_mode)
            log.error("request %s: ext_proc request body mode %s does not let the router see the body",
                      self.request_id or "-", mode)
            return self._reject(RequestError(
                500, f"gateway misconfiguration: the body-based router needs the request body BUFFERED or "
                     f"FULL_DUPLEX_STREAMED, not {mode}", error_type="server_error", code="bbr_body_mode",
            ))
        self.phase = Phase.BODY
        return [messages.continue_request_headers()] if self._request_mode in BUFFERED_MODES else []

    def _request_body(self, body: pb.HttpBody) -> Replies:
        if self.phase is not Phase.BODY:
            raise ProtocolViolation(f"request_body received while {self.phase.value}")
        try:
            self._body.append(body.body)
        except RequestError as error:
            return self._reject(error)
        # BUFFERED(_PARTIAL) sends exactly one body message, whatever its end_of_stream says.
        if body.end_of_stream or self._request_mode in BUFFERED_MODES:
            return self._route_body(end_of_stream=True)
        return []

    def _request_trailers(self) -> Replies:
        if self.phase is Phase.BODY:  # trailers end a body whose last data frame had no end_of_stream
            return [*self._route_body(end_of_stream=False), messages.trailers_reply(response=False)]
        if self.phase is Phase.ROUTED:
            return [messages.trailers_reply(response=False)]
        raise ProtocolViolation(f"request_trailers received while {self.phase.value}")

    def _route_body(self, end_of_stream: bool) -> Replies:
        body = self._body.getvalue()
        if self._request_mode in BUFFERED_MODES:
            return self._route(body, lambda out: [messages.buffered_body_reply(out.set, None, None, out.remove)])
        return self._route(body, lambda out: [
            messages.request_headers_reply(out.set, remove=out.remove),
            *messages.streamed_body(body, end_of_stream),
        ])

    def _route(self, body: bytes | None, reply: ReplyBuilder) -> Replies:
        try:
            out = self.router.route(self.request_id, self.headers, body)
        except RequestError as error:
            return self._reject(error)
        self.phase = Phase.ROUTED
        log.debug("request %s %s: %s", self.request_id or "-", request_path(self.headers), out.set or "no model")
        return reply(out)

    def _reject(self, error: RequestError) -> Replies:
        self.phase = Phase.REJECTED
        log.info("request %s %s rejected: %d %s", self.request_id or "-", request_path(self.headers),
                 error.status, error.message)
        return [messages.immediate_reply(error)]

