"""The ext_proc state machine for one gRPC stream (= one HTTP request), free of any gRPC runtime.

``handle`` takes one ``ProcessingRequest`` and returns the replies to send, in order; ``close`` is
called once when the stream ends however it ends. Sequencing follows the reference picker
(gie-facts A2): in FULL_DUPLEX_STREAMED mode the headers answer waits for the whole body, then the
headers answer and the body (as streamed chunks) go back together; in BUFFERED mode headers are
answered at once and the pick rides on the body answer; a body-less request is routed on its headers.
Request body modes NONE and STREAMED would hide the body the pick depends on (model, prompt): a request
with a body then gets a 500 naming the misconfiguration (as the body-based router does) rather than a
blind pick. The request phase itself (headers, modes, body, trailers) lives in ``epp.extproc.collect``.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

from envoy.service.ext_proc.v3 import external_processor_pb2 as pb

from epp.director import Director, RoutingDecision
from epp.extproc import messages
from epp.extproc.collect import BUFFERED_MODES, Deferred, Phase, ProtocolViolation, Replies, RequestCollector
from epp.extproc.response import ResponseRelay
from epp.request import LLMRequest, RequestError, RequestKind
from epp.request.body import DEFAULT_MAX_BODY_BYTES, BodyBuffer
from epp.request.headers import LB_METADATA_NAMESPACE, REQUEST_ID_HEADER, SERVED_KEY, SUBSET_KEY, SUBSET_NAMESPACE
from epp.request.parse import request_path

__all__ = ["Deferred", "Phase", "ProtocolViolation", "RequestStream"]


class RequestStream(RequestCollector):
    """One request's life on the picker: collect, parse, route, relay the response, release."""

    component = "the endpoint picker"

    def __init__(
        self,
        director: Director,
        max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
        new_request_id: Callable[[], str] = lambda: str(uuid.uuid4()),
    ) -> None:
        super().__init__(max_body_bytes)
        self.director = director
        self.decision: RoutingDecision | None = None
        self._new_request_id = new_request_id
        self._generated_id = False
        self._subset: list[object] | None = None
        self._relay: ResponseRelay | None = None
        self._pending: Deferred[RoutingDecision | RequestError] | None = None

    def handle(self, message: pb.ProcessingRequest) -> Replies | Deferred[Any]:
        kind = message.WhichOneof("request")
        if kind is None:
            raise ProtocolViolation("ProcessingRequest carries no headers, body or trailers")
        if self.phase is Phase.REJECTED:
            return []  # Envoy may still flush messages sent before it saw the immediate response
        if message.HasField("metadata_context"):
            self._read_subset(message)
        replies = self.handle_request(kind, message)
        if replies is not None:
            return replies
        if self.phase is not Phase.ROUTED:
            raise ProtocolViolation(f"{kind} received while {self.phase.value}")
        assert self._relay is not None
        if kind == "response_headers":
            metadata, served = None, None
            if message.HasField("metadata_context"):
                served = _served(message)
                if self.director.wants_response_metadata:
                    metadata = messages.filter_metadata(message.metadata_context)
            return self._relay.headers(message.response_headers, metadata, served)
        if kind == "response_body":
            return self._relay.body(message.response_body)
        return self._relay.trailers()

    def refuse(self, message: pb.ProcessingRequest, error: RequestError) -> Replies:
        """Answer the stream's first message with ``error`` (e.g. epp overloaded) without routing it.

        The headers are still read so the refusal is logged and counted under the request's id.
        """
        if message.WhichOneof("request") != "request_headers":
            raise ProtocolViolation(f"stream must start with request_headers, got {message.WhichOneof('request')}")
        self.read_headers(message)
        return self.reject(error)

    @property
    def buffered_bytes(self) -> int:
        """Bytes this stream holds for the client right now (request body, response copy, SSE line)."""
        return len(self.body) + (self._relay.buffered_bytes if self._relay is not None else 0)

    def close(self) -> None:
        """The gRPC stream ended (normally, by cancellation or error): release the routed request once,
        or take a request still waiting for admission out of its queue."""
        if self._pending is not None:
            self._pending.abandon(self._release_unanswered)
        if self._relay is not None:
            self._relay.close()
        elif self.decision is not None:
            self.director.finish(self.decision)

    def _release_unanswered(self, outcome: RoutingDecision | RequestError) -> None:
        if isinstance(outcome, RoutingDecision):  # dispatched after the client left: never sent anywhere
            self.director.finish(outcome, judged=False)

    # -- request phase (hooks of RequestCollector) ----------------------------------------------
    def missing_request_id(self) -> str:
        self._generated_id = True
        return self._new_request_id()

    def route_headers_only(self) -> Replies:
        request = LLMRequest(self.request_id, RequestKind.OTHER, "", path=request_path(self.headers), headers=self.headers)
        try:
            decision = self.director.route_any(request)
        except RequestError as error:
            return self.reject(error, request)
        self._routed(decision)
        return [messages.request_headers_reply(self._upstream_headers(decision), decision.destination)]

    def route_body(self, end_of_stream: bool) -> Replies | Deferred[Any]:
        body = self.body.getvalue()
        try:
            request = self.director.parsers.parse(self.request_id, self.headers, body)
        except RequestError as error:
            return self.reject(error)
        pending: Deferred[RoutingDecision | RequestError] = Deferred(
            lambda outcome: self._answer(request, outcome, body, end_of_stream))
        self.phase = Phase.ADMITTING
        pending.waiting = self.director.submit(request, len(body), self._subset, pending.resolve)
        if pending.ready:
            return pending.now()
        self._pending = pending
        return pending

    def _answer(self, request: LLMRequest, outcome: RoutingDecision | RequestError, body: bytes,
                end_of_stream: bool) -> Replies:
        if isinstance(outcome, RequestError):
            return self.reject(outcome, request)
        decision = outcome
        self._routed(decision)
        self.body = BodyBuffer(self.body.limit)  # forwarded below: do not hold it for the whole response
        headers = self._upstream_headers(decision)
        if decision.body is not None:
            headers["content-length"] = str(len(decision.body))
        if self.request_mode in BUFFERED_MODES:
            return [messages.buffered_body_reply(headers, decision.destination, decision.body,
                                                 decision.removed_headers, scores=decision.scores)]
        out = decision.body if decision.body is not None else body
        return [
            messages.request_headers_reply(headers, decision.destination, remove=decision.removed_headers,
                                           scores=decision.scores),
            *messages.streamed_body(out, end_of_stream),
        ]

    def _routed(self, decision: RoutingDecision) -> None:
        self.decision = decision
        self.phase = Phase.ROUTED
        self._relay = ResponseRelay(self.director, decision, self.response_mode, self.body.limit)

    def _upstream_headers(self, decision: RoutingDecision) -> dict[str, str]:
        headers = dict(decision.headers)
        if self._generated_id:
            headers[REQUEST_ID_HEADER] = self.request_id
        return headers

    def reject(self, error: RequestError, request: LLMRequest | None = None) -> Replies:
        self.phase = Phase.REJECTED
        self.director.reject(error, self.request_id, request_path(self.headers), request)
        return [messages.immediate_reply(error)]

    def _read_subset(self, message: pb.ProcessingRequest) -> None:
        """The gateway's subset hint (``envoy.lb.subset_hint``); the latest message that has it wins."""
        namespaces = message.metadata_context.filter_metadata
        if SUBSET_NAMESPACE not in namespaces:
            return
        fields = namespaces[SUBSET_NAMESPACE].fields
        if SUBSET_KEY not in fields:
            return
        value = fields[SUBSET_KEY]
        kind = value.WhichOneof("kind")
        if kind == "list_value":  # the reference's shape; non-strings are ignored when matching
            self._subset = [v.string_value if v.WhichOneof("kind") == "string_value" else None
                            for v in value.list_value.values]
        elif kind == "string_value":  # GIE's lightweight picker also accepts a comma list
            self._subset = [part for part in value.string_value.split(",") if part.strip()]
        else:
            self._subset = []  # present but unusable: treated like an empty hint


def _served(message: pb.ProcessingRequest) -> str | None:
    """The endpoint the gateway reports having used (``envoy.lb`` / ``…-served``, override_host's
    ``selected_host_key``), if it reports one."""
    namespaces = message.metadata_context.filter_metadata
    if LB_METADATA_NAMESPACE not in namespaces:
        return None
    value = namespaces[LB_METADATA_NAMESPACE].fields.get(SERVED_KEY)
    return value.string_value if value is not None and value.WhichOneof("kind") == "string_value" else None
