"""The body-based router's ext_proc state machine for one gRPC stream, free of any gRPC runtime.

The router must see the whole body before the gateway picks a route; the request phase (BUFFERED, the
contract in docs/deploy.md, or FULL_DUPLEX_STREAMED; a loud 500 for NONE/STREAMED with a body) is
``epp.extproc.collect``'s, shared with the picker.

The response phase is not needed; if the gateway sends it anyway (Envoy sends response headers unless told
to skip them) it is passed through untouched.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from envoy.service.ext_proc.v3 import external_processor_pb2 as pb

from epp.bbr.router import BodyRouter, RouteHeaders
from epp.extproc import messages
from epp.extproc.collect import BUFFERED_MODES, DUPLEX, Deferred, Phase, ProtocolViolation, Replies, RequestCollector
from epp.request import RequestError
from epp.request.body import DEFAULT_MAX_BODY_BYTES
from epp.request.parse import request_path

log = logging.getLogger(__name__)

ReplyBuilder = Callable[[RouteHeaders], Replies]


class RouterStream(RequestCollector):
    """One request through the router: collect the body, set the routing headers, pass the rest through."""

    component = "the body-based router"
    body_mode_code = "bbr_body_mode"
    over = False  # the router answers until Envoy closes the stream

    def __init__(self, router: BodyRouter, max_body_bytes: int = DEFAULT_MAX_BODY_BYTES) -> None:
        super().__init__(max_body_bytes)
        self.router = router

    def handle(self, message: pb.ProcessingRequest) -> Replies | Deferred[Any]:
        kind = message.WhichOneof("request")
        if kind is None:
            raise ProtocolViolation("ProcessingRequest carries no headers, body or trailers")
        if self.phase is Phase.REJECTED:
            return []  # Envoy may still flush messages sent before it saw the immediate response
        replies = self.handle_request(kind, message)
        if replies is not None:
            return replies
        if self.phase is not Phase.ROUTED:
            raise ProtocolViolation(f"{kind} received while {self.phase.value}")
        if kind == "response_headers":
            return [messages.response_headers_reply({})]
        if kind == "response_body":
            body = message.response_body
            if self.response_mode == DUPLEX:
                return list(messages.streamed_body(body.body, body.end_of_stream, response=True))
            return [messages.body_reply(response=True)]
        return [messages.trailers_reply(response=True)]

    def close(self) -> None:
        """Nothing is held per request once the stream ends."""

    def route_headers_only(self) -> Replies:
        return self._route(None, lambda out: [messages.request_headers_reply(out.set, remove=out.remove)])

    def route_body(self, end_of_stream: bool) -> Replies:
        body = self.body.getvalue()
        if self.request_mode in BUFFERED_MODES:
            return self._route(body, lambda out: [messages.buffered_body_reply(out.set, remove=out.remove)])
        return self._route(body, lambda out: [
            messages.request_headers_reply(out.set, remove=out.remove),
            *messages.streamed_body(body, end_of_stream),
        ])

    def _route(self, body: bytes | None, reply: ReplyBuilder) -> Replies:
        try:
            out = self.router.route(self.request_id, self.headers, body)
        except RequestError as error:
            return self.reject(error)
        self.phase = Phase.ROUTED
        log.debug("request %s %s: %s", self.request_id or "-", request_path(self.headers), out.set or "no model")
        return reply(out)

    def reject(self, error: RequestError) -> Replies:
        self.phase = Phase.REJECTED
        log.info("request %s %s rejected: %d %s", self.request_id or "-", request_path(self.headers),
                 error.status, error.message)
        return [messages.immediate_reply(error)]
