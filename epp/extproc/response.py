"""The response half of an ext_proc stream: relay the engine's answer, read its usage and outcome for the stream
that releases the request.

The response-headers answer carries the scheduler plugins' response headers (e.g. the session-affinity
token) when Envoy sends response headers at all — not on a failed answer. The outcome is judged here:
``:status`` ≥ 400 (Envoy's own 503/504 for connect failures, resets before the response and timeouts
included: Envoy sends those local replies through ext_proc) is a ``Failure`` for the director. A stream
that ends without any response is not judged: on the wire a client that left (Envoy cancels the stream)
and a gateway that ended it look alike (grpc.aio may report either as a clean end). Streams (``"stream": true`` or ``text/event-stream``) are answered chunk by chunk as they arrive; only
the unfinished last SSE line is kept for usage parsing. A plain JSON response is passed through at once
too, while a bounded copy is kept for its ``usage``; it is held back until its end only when the model
name must be rewritten back to the client's name (the reference byte-replaces ``"model":"<target>"``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson
from envoy.extensions.filters.http.ext_proc.v3.processing_mode_pb2 import ProcessingMode
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb

from epp.director import FAILOVER, Director, Failure, RoutingDecision
from epp.extproc import messages
from epp.request import RequestError
from epp.request.body import BodyBuffer
from epp.request.usage import GrpcUsageReader, SSEUsageReader, Usage, usage_from_json

RESPONSE_MARK_HEADER = "x-went-into-resp-headers"

Replies = list[pb.ProcessingResponse]


class ResponseRelay:
    """Response-phase handling for one routed request. It relays and reads the response; its stream
    releases the request once ``ended`` (``RequestStream._release``), asking ``outcome`` for what the
    response showed. (It holds no reference back to the stream: a cycle per request would wait for the
    tuned-down garbage collector.)"""

    def __init__(self, director: Director, decision: RoutingDecision, mode: int, buffer_limit: int) -> None:
        self.director = director
        self.ended = False
        """The response is over (end of stream on its headers or body, or its trailers)."""
        self.decision = decision
        self.mode = mode
        self.streaming = decision.request.stream
        self.size = 0
        self._reader: SSEUsageReader | GrpcUsageReader = SSEUsageReader()
        self._copy: BodyBuffer | None = BodyBuffer(buffer_limit)
        # Swapping changes lengths: only where Envoy lets us fix content-length (buffered) or drops it (duplex).
        self._swaps = _model_swaps(decision) if mode in (ProcessingMode.FULL_DUPLEX_STREAMED, ProcessingMode.BUFFERED) else []
        self._holding = False
        self._failure: Failure | None = None
        self._update_hold()

    def headers(self, message: pb.HttpHeaders, metadata: Mapping[str, Any] | None = None,
                served: str | None = None) -> Replies:
        """``metadata``: the gateway's response-phase ``filter_metadata`` (for ResponseReceived plugins);
        ``served``: the endpoint the gateway says answered. Another than the primary means the primary
        failed and a retry went down the fallback list: the primary is told it failed (``failover``)."""
        headers = messages.header_dict(message.headers)
        content_type = headers.get("content-type", "").lower()
        if content_type.startswith("application/grpc"):  # vLLM's gRPC API: framed protobuf, read as it streams
            self._reader = GrpcUsageReader()
            self.streaming = True
        self.streaming = self.streaming or "text/event-stream" in content_type
        self._update_hold()
        self._failure = Failure.from_status(_status(headers.get(":status", "")))
        if self._failure is None and served and served != self.decision.endpoints[0].hostport:
            self._failure = FAILOVER
        added = {RESPONSE_MARK_HEADER: "true"}
        if self._failure is None:
            added.update(self.director.response_headers(self.decision, metadata))
        self.ended = self.ended or message.end_of_stream
        return [messages.response_headers_reply(added)]

    def body(self, message: pb.HttpBody) -> Replies:
        chunk, eos = message.body, message.end_of_stream
        if chunk and self._failure is None:  # an error status's body is no first token: nothing was computed
            self.director.response_started(self.decision)
        self.size += len(chunk)
        if self.streaming:
            self._reader.feed(chunk)
            out = self._swap(chunk)
        else:
            out = self._keep(chunk)
            if self._holding:
                if not eos:
                    return []
                assert self._copy is not None
                out = self._swap(self._copy.getvalue())
            else:
                out = self._swap(out)
        self.ended = self.ended or eos
        return self._emit(chunk, out, eos)

    def trailers(self) -> Replies:
        self.ended = True
        return [messages.trailers_reply(response=True)]

    @property
    def buffered_bytes(self) -> int:
        """The bounded copies this relay keeps: the JSON body copy (≤ the body limit) and the SSE line."""
        return (len(self._copy) if self._copy is not None else 0) + self._reader.pending_bytes

    def _update_hold(self) -> None:
        """Hold a duplex JSON body to its end only when a model name has to be swapped back in it."""
        self._holding = bool(self._swaps) and not self.streaming and self.mode == ProcessingMode.FULL_DUPLEX_STREAMED

    def _keep(self, chunk: bytes) -> bytes:
        """Copy a JSON chunk for usage parsing; past the limit give up the copy (and any hold) and pass through."""
        if self._copy is None:
            return chunk
        try:
            self._copy.append(chunk)
        except RequestError:
            held = self._copy.getvalue() + chunk if self._holding else chunk
            self._copy, self._holding = None, False
            return held
        return chunk

    def _emit(self, chunk: bytes, out: bytes, eos: bool) -> Replies:
        if self.mode == ProcessingMode.FULL_DUPLEX_STREAMED:
            return list(messages.streamed_body(out, eos, response=True))
        return [messages.body_reply(response=True, body=out if out is not chunk else None)]

    def _swap(self, data: bytes) -> bytes:
        for target, client in self._swaps:
            if target in data:
                data = data.replace(target, client)
        return data

    def outcome(self, completed: bool) -> tuple[Usage, int | None, Failure | None]:
        """What the response showed, read once when the request is released: the usage it reported, its
        size when it ``completed`` (else None), and its failure (an error status, or a failover)."""
        if self.streaming:
            self._reader.close()
            usage = self._reader.usage
        elif self._copy is not None and len(self._copy):
            usage = usage_from_json(self._copy.getvalue())
        else:
            usage = Usage()
        return usage, self.size if completed else None, self._failure


def _status(value: str) -> int:
    """``:status`` as a number; an absent or odd one counts as a working answer (0)."""
    return int(value) if value.isdigit() else 0


def _model_swaps(decision: RoutingDecision) -> list[tuple[bytes, bytes]]:
    """Byte patterns that put the client's model name back when the request was sent under another name."""
    request = decision.request
    if not request.model or request.target_model == request.model:
        return []
    target, client = orjson.dumps(request.target_model), orjson.dumps(request.model)
    return [(b'"model":' + target, b'"model":' + client), (b'"model": ' + target, b'"model": ' + client)]
