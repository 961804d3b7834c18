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
    return pb.HeaderMutation(
        set_headers=[
            base_pb2.HeaderValueOption(
                header=base_pb2.HeaderValue(key=k, raw_value=v.encode("latin-1", "replace")), append_action=_OVERWRITE
            )
            for k, v in headers.items()
        ],
        remove_headers=list(remove),
    )


def dynamic_metadata(metadata: Mapping[str, Mapping[str, Any]]) -> struct_pb2.Struct:
    """Namespace → key → value (nested mappings become nested structs) as a reply's ``dynamic_metadata``:
    the routing answer's ``envoy.lb``, or plugins' response metadata."""
    md = struct_pb2.Struct()
    for namespace, values in metadata.items():
        md.get_or_create_struct(namespace).update(values)
    return md


def request_headers_reply(
    headers: Mapping[str, str],
    remove: Iterable[str] = (),
    metadata: Mapping[str, Mapping[str, Any]] | None = None,
) -> pb.ProcessingResponse:
    """Answer to ``request_headers``: set/remove headers, clear the route cache, attach ``metadata``."""
    common = pb.CommonResponse(header_mutation=header_mutation(headers, remove), clear_route_cache=True)
    reply = pb.ProcessingResponse(request_headers=pb.HeadersResponse(response=common))
    if metadata:
        reply.dynamic_metadata.CopyFrom(dynamic_metadata(metadata))
    return reply


def continue_request_headers() -> pb.ProcessingResponse:
    """Empty headers answer: BUFFERED mode sends the body only after this, and the pick rides on the body answer."""
    return pb.ProcessingResponse(request_headers=pb.HeadersResponse())


def buffered_body_reply(
    headers: Mapping[str, str], body: bytes | None = None, remove: Iterable[str] = (),
    metadata: Mapping[str, Mapping[str, Any]] | None = None,
) -> pb.ProcessingResponse:
    """BUFFERED mode: the body answer carries the header mutation, ``metadata`` and, if rewritten, the new body."""
    common = pb.CommonResponse(header_mutation=header_mutation(headers, remove), clear_route_cache=True)
    if body is not None:
        common.body_mutation.body = body
    reply = pb.ProcessingResponse(request_body=pb.BodyResponse(response=common))
    if metadata:
        reply.dynamic_metadata.CopyFrom(dynamic_metadata(metadata))
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
        chunk = pb.StreamedBodyResponse(body=body[start:start + MAX_CHUNK_BYTES], end_of_stream=end_of_stream and start == last)
        common = pb.CommonResponse()
        common.body_mutation.streamed_response.CopyFrom(chunk)
        yield pb.ProcessingResponse(**{field: pb.BodyResponse(response=common)})


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
    common = pb.CommonResponse(header_mutation=header_mutation(headers))
    return pb.ProcessingResponse(response_headers=pb.HeadersResponse(response=common))


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
