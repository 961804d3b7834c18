"""Building ext_proc ``ProcessingResponse`` messages; the only module that knows their protobuf shape.

A routed request's answer (headers, ``envoy.lb`` metadata, body) is decided in one place,
``epp.director.RoutingDecision.answer``; ``routing_replies`` only puts that ``RoutingAnswer`` into the
reply shapes of the stream's body mode.

Header values always go in ``raw_value`` (Envoy ignores ``value`` for mutations and forwards an empty
header). Bodies sent back in FULL_DUPLEX_STREAMED mode are split into ``streamed_response`` chunks of
at most ``MAX_CHUNK_BYTES``, the last one carrying ``end_of_stream``.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

from envoy.config.core.v3 import base_pb2
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb
from envoy.type.v3 import http_status_pb2
from google.protobuf import json_format, struct_pb2

from epp.request import RequestError
from epp.request.headers import DROPPED_REASON_HEADER

if TYPE_CHECKING:
    from epp.director import RoutingAnswer

MAX_CHUNK_BYTES = 62_000

_OVERWRITE = base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD


def header_dict(headers: base_pb2.HeaderMap) -> dict[str, str]:
    """Envoy's header map as a dict with lower-cased names; ``raw_value`` wins over ``value`` (Envoy
    fills only ``raw_value``, older clients only ``value``). A repeated name keeps its last value."""
    return {h.key.lower(): h.raw_value.decode("latin-1") if h.raw_value else h.value for h in headers.headers}


def filter_metadata(metadata: base_pb2.Metadata) -> dict[str, Any]:
    """``metadata_context.filter_metadata`` as plain data (namespace → dict), as the reference hands it to plugins."""
    return {ns: json_format.MessageToDict(struct) for ns, struct in metadata.filter_metadata.items()}


def header_mutation(headers: Mapping[str, str], remove: Iterable[str] = ()) -> pb.HeaderMutation:
    """Set ``headers`` (overwriting) and drop the ``remove`` names (e.g. client-sent copies of routing headers)."""
    mutation = pb.HeaderMutation()
    _fill_headers(mutation, headers, remove)
    return mutation


def _fill_headers(mutation: pb.HeaderMutation, headers: Mapping[str, str], remove: Iterable[str] = ()) -> None:
    """``header_mutation`` written into the reply's own message: building it apart and copying it in
    (constructor arguments copy) cost ~4× as much per request."""
    mutation.SetInParent()  # present even when empty, as constructing it made it
    add = mutation.set_headers.add
    for k, v in headers.items():
        option = add()
        option.header.key = k
        option.header.raw_value = v.encode("latin-1", "replace")
        option.append_action = _OVERWRITE
    if remove:
        mutation.remove_headers.extend(remove)


def dynamic_metadata(metadata: Mapping[str, Mapping[str, Any]]) -> struct_pb2.Struct:
    """Namespace → key → value (nested mappings become nested structs) as a ``dynamic_metadata`` struct:
    the routing answer's ``envoy.lb``, or plugins' response metadata."""
    md = struct_pb2.Struct()
    _fill_metadata(md, metadata)
    return md


def _fill_metadata(target: struct_pb2.Struct, metadata: Mapping[str, Mapping[str, Any]]) -> None:
    """``dynamic_metadata`` written into the reply's own struct through the raw ``fields`` maps (the
    ``Struct`` helpers are pure Python): strings (the destination) directly, mappings (the scores) and
    other values through ``Struct.update``."""
    for namespace, values in metadata.items():
        struct = target.fields[namespace].struct_value
        struct.SetInParent()  # present even when empty, as get_or_create_struct made it
        for key, value in values.items():
            if isinstance(value, str):
                struct.fields[key].string_value = value
            elif isinstance(value, Mapping):
                struct.fields[key].struct_value.update(value)
            else:
                struct.update({key: value})


def request_headers_reply(
    headers: Mapping[str, str],
    remove: Iterable[str] = (),
    metadata: Mapping[str, Mapping[str, Any]] | None = None,
) -> pb.ProcessingResponse:
    """Answer to ``request_headers``: set/remove headers, clear the route cache, attach ``metadata``."""
    reply = pb.ProcessingResponse()
    common = reply.request_headers.response
    common.clear_route_cache = True
    _fill_headers(common.header_mutation, headers, remove)
    if metadata:
        _fill_metadata(reply.dynamic_metadata, metadata)
    return reply


def continue_request_headers() -> pb.ProcessingResponse:
    """Empty headers answer: BUFFERED mode sends the body only after this, and the pick rides on the body answer."""
    return pb.ProcessingResponse(request_headers=pb.HeadersResponse())


def buffered_body_reply(
    headers: Mapping[str, str], body: bytes | None = None, remove: Iterable[str] = (),
    metadata: Mapping[str, Mapping[str, Any]] | None = None,
) -> pb.ProcessingResponse:
    """BUFFERED mode: the body answer carries the header mutation, ``metadata`` and, if rewritten, the new body."""
    reply = pb.ProcessingResponse()
    common = reply.request_body.response
    common.clear_route_cache = True
    _fill_headers(common.header_mutation, headers, remove)
    if body is not None:
        common.body_mutation.body = body
    if metadata:
        _fill_metadata(reply.dynamic_metadata, metadata)
    return reply


def routing_replies(answer: RoutingAnswer, body: bytes | None, buffered: bool,
                    end_of_stream: bool = True) -> list[pb.ProcessingResponse]:
    """The replies that send a routed request on. ``body``: the request body as received, or None for a
    body-less request (answered on its headers). BUFFERED: one body answer with the header mutation, the
    metadata and any replacement body. FULL_DUPLEX_STREAMED: the headers answer, then the body (the
    replacement, else as received) as streamed chunks."""
    if body is None:
        return [request_headers_reply(answer.headers, answer.remove, answer.metadata)]
    if buffered:
        return [buffered_body_reply(answer.headers, answer.body, answer.remove, answer.metadata)]
    out = answer.body if answer.body is not None else body
    return [request_headers_reply(answer.headers, answer.remove, answer.metadata), *streamed_body(out, end_of_stream)]


def streamed_body(body: bytes, end_of_stream: bool, response: bool = False) -> Iterator[pb.ProcessingResponse]:
    """``body`` as duplex ``streamed_response`` chunks; an empty body still yields one (EoS) chunk."""
    field = "response_body" if response else "request_body"
    n = len(body)
    offsets = range(0, n, MAX_CHUNK_BYTES) if n else range(1)
    last = offsets[-1]
    for start in offsets:
        reply = pb.ProcessingResponse()
        # Filled in place: a chunk built apart and CopyFrom'd into place copied its 62 KB a second time.
        streamed = getattr(reply, field).response.body_mutation.streamed_response
        streamed.body = body[start:start + MAX_CHUNK_BYTES]
        streamed.end_of_stream = end_of_stream and start == last
        yield reply


def body_reply(response: bool, body: bytes | None = None) -> pb.ProcessingResponse:
    """STREAMED/BUFFERED answer to one body message: continue, or replace that message's bytes.

    A replacement also sets ``content-length`` (only valid in BUFFERED mode, where headers are still
    held): Envoy refuses a mutated body whose length disagrees with the header.
    """
    common = pb.CommonResponse()
    if body is not None:
        common.body_mutation.body = body
        common.header_mutation.CopyFrom(header_mutation({"content-length": str(len(body))}))
    message = pb.BodyResponse(response=common)
    return pb.ProcessingResponse(response_body=message) if response else pb.ProcessingResponse(request_body=message)


def response_headers_reply(headers: Mapping[str, str]) -> pb.ProcessingResponse:
    reply = pb.ProcessingResponse()
    _fill_headers(reply.response_headers.response.header_mutation, headers)
    return reply


def trailers_reply(response: bool) -> pb.ProcessingResponse:
    if response:
        return pb.ProcessingResponse(response_trailers=pb.TrailersResponse())
    return pb.ProcessingResponse(request_trailers=pb.TrailersResponse())


def immediate_reply(error: RequestError) -> pb.ProcessingResponse:
    """The HTTP answer epp gives itself: status, OpenAI JSON body, and the drop reason where defined."""
    headers = {"content-type": "application/json"}
    if error.reason:
        headers[DROPPED_REASON_HEADER] = error.reason
    details = "epp_" + (error.reason or error.code or str(error.status)).replace("-", "_")
    return pb.ProcessingResponse(
        immediate_response=pb.ImmediateResponse(
            status=http_status_pb2.HttpStatus(code=error.status),
            headers=header_mutation(headers),
            body=error.to_json(),
            details=details,
        )
    )
