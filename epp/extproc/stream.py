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
from epp.request.headers import LB_METADATA_NAMESPACE, SERVED_KEY, SUBSET_KEY, SUBSET_NAMESPACE
from epp.request.parse import request_path

__all__ = ["Deferred", "Phase", "ProtocolViolation", "RequestStream"]


class RequestStream(RequestCollector):
    """The exchange of one ext_proc stream: one request's life on the picker (collect, parse, route, relay
    the response, release). It holds the request's state (phase, routing decision, the admission wait,
    the response relay) and is the one place the request is released (``_release``, on the response's
    end or the stream's close, whichever comes first)."""

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
        self._generated_id: str | None = None  # the id made up for a request without x-request-id
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
            return self._answered(self._relay.headers(message.response_headers, metadata, served), ending=False)
        if kind == "response_body":
            return self._answered(self._relay.body(message.response_body), message.response_body.end_of_stream)
        return self._answered(self._relay.trailers(), ending=True)

    def _answered(self, replies: Replies, ending: bool) -> Replies:
        """Release the request once the response is over; the body's last answer and the trailers' answer
        carry the plugins' response metadata (e.g. request-attribute-reporter's cost), which the release
        produced."""
        assert self._relay is not None and self.decision is not None
        if self._relay.ended:
            self._release(completed=True)
            if ending and replies and self.decision.metadata:
                replies[-1].dynamic_metadata.CopyFrom(messages.dynamic_metadata(self.decision.metadata))
        return replies

    def refuse(self, message: pb.ProcessingRequest, error: RequestError) -> Replies:
        """Answer the stream's first message with ``error`` (e.g. epp overloaded) without routing it.

        The headers are still read so the refusal is logged and counted under the request's id.
        """
        if message.WhichOneof("request") != "request_headers":
            raise ProtocolViolation(f"stream must start with request_headers, got {message.WhichOneof('request')}")
        self.read_headers(message)
        return self.reject(error)

    @property
    def over(self) -> bool:
        """The response has ended (and the request was released): Envoy sends nothing more that needs an
        answer, so the transport may end the call without waiting for Envoy to close its side."""
        return self._relay is not None and self._relay.ended

    @property
    def buffered_bytes(self) -> int:
        """Bytes this stream holds for the client right now (request body, response copy, SSE line)."""
        return len(self.body) + (self._relay.buffered_bytes if self._relay is not None else 0)

    def close(self) -> None:
        """The gRPC stream ended (normally, by cancellation or error). A request still waiting for
        admission leaves its queue; one that flow control dispatched after the client left was never sent
        anywhere and is released unjudged; a routed one is released with what its response showed."""
        pending = self._pending
        if self.phase is Phase.ADMITTING and pending is not None:
            if not pending.ready:
                if pending.waiting is not None:
                    pending.waiting.cancel()
                return
            if isinstance(pending.outcome, RoutingDecision):
                self.decision = pending.outcome
        self._release(completed=False)

    def _release(self, completed: bool) -> None:
        """Finish the routed request: the one place this stream lets it go. ``RoutingDecision.finished``
        (set by ``Director.finish``) is the only release-once guard: the response's end, trailers and the
        stream's close may each ask, the first one counts. ``completed``: the response ended normally."""
        decision = self.decision
        if decision is None or decision.finished:
            return
        if self._relay is None:  # dispatched but never answered: no outcome to judge
            self.director.finish(decision, judged=False)
            return
        usage, size, failure = self._relay.outcome(completed)
        self.director.finish(decision, usage, size, failure, judged=completed or failure is not None)

    # -- request phase (hooks of RequestCollector) ----------------------------------------------
    def missing_request_id(self) -> str:
        self._generated_id = self._new_request_id()
        return self._generated_id

    def route_headers_only(self) -> Replies:
        request = LLMRequest(self.request_id, RequestKind.OTHER, "", path=request_path(self.headers), headers=self.headers)
        try:
            decision = self.director.route_any(request)
        except RequestError as error:
            return self.reject(error, request)
        self._routed(decision)
        return messages.routing_replies(decision.answer(self._generated_id), None, buffered=False)

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
        self._routed(outcome)
        self.body = BodyBuffer(self.body.limit)  # forwarded below: do not hold it for the whole response
        return messages.routing_replies(outcome.answer(self._generated_id), body,
                                        buffered=self.request_mode in BUFFERED_MODES, end_of_stream=end_of_stream)

    def _routed(self, decision: RoutingDecision) -> None:
        self.decision = decision
        self.phase = Phase.ROUTED
        self._relay = ResponseRelay(self.director, decision, self.response_mode, self.body.limit)

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
