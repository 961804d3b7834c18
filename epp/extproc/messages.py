"""Building ext_proc ``ProcessingResponse`` messages; the only module that knows their protobuf shape.

Header values always go in ``raw_value`` (Envoy ignores ``value`` for mutations and forwards an empty
header). Bodies sent back in FULL_DUPLEX_STREAMED mode are split into ``streamed_response`` chunks of
at most ``MAX_CHUNK_BYTES``, the last one carrying ``end_of_stream``.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from envoy.config.core.v3 import base_pb2
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb
from envoy.type.v3 import http_status_pb2
from google.protobuf import json_format, struct_pb2

from epp.request import RequestError
from epp.request.headers import DESTINATION_HEADER, DROPPED_REASON_HEADER, LB_METADATA_NAMESPACE, SCORES_KEY

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


def destination_metadata(destination: str, scores: Mapping[str, float] | None = None) -> struct_pb2.Struct:
    """``{"envoy.lb": {"x-gateway-destination-endpoint": destination}}``: must equal the header. With
    ``scores`` (``--emit-endpoint-scores``) also ``x-gateway-destination-endpoint-scores``: ``{ip:port: score}``
    for every endpoint the primary profile scored, picked or not."""
    md = struct_pb2.Struct()
    _fill_destination(md, destination, scores)
    return md


def _fill_destination(metadata: struct_pb2.Struct, destination: str, scores: Mapping[str, float] | None) -> None:
    """``destination_metadata`` written into the reply's own ``dynamic_metadata`` through the raw
    ``fields`` maps (the ``Struct`` helpers are pure Python)."""
    lb = metadata.fields[LB_METADATA_NAMESPACE].struct_value
    lb.fields[DESTINATION_HEADER].string_value = destination
    if scores is not None:
        lb.fields[SCORES_KEY].struct_value.update(scores)


def plugin_metadata(metadata: Mapping[str, Mapping[str, Any]]) -> struct_pb2.Struct:
    """Plugins' response metadata (namespace → key → value) as the reply's ``dynamic_metadata``."""
    md = struct_pb2.Struct()
    for namespace, values in metadata.items():
        md.get_or_create_struct(namespace).update(values)
    return md


def request_headers_reply(
    headers: Mapping[str, str],
    destination: str | None = None,
    clear_route_cache: bool = True,
    remove: Iterable[str] = (),
    scores: Mapping[str, float] | None = None,
) -> pb.ProcessingResponse:
    """Answer to ``request_headers``: set/remove headers (+ routing metadata when a destination is given)."""
    reply = pb.ProcessingResponse()
    common = reply.request_headers.response
    common.clear_route_cache = clear_route_cache
    _fill_headers(common.header_mutation, headers, remove)
    if destination is not None:
        _fill_destination(reply.dynamic_metadata, destination, scores)
    return reply


def continue_request_headers() -> pb.ProcessingResponse:
    """Empty headers answer: BUFFERED mode sends the body only after this, and the pick rides on the body answer."""
    return pb.ProcessingResponse(request_headers=pb.HeadersResponse())


def buffered_body_reply(
    headers: Mapping[str, str], destination: str | None, body: bytes | None, remove: Iterable[str] = (),
    scores: Mapping[str, float] | None = None,
) -> pb.ProcessingResponse:
    """BUFFERED mode: the body answer carries the header mutation and, if rewritten, the new body.

    Without a destination (the body-based router) no routing metadata is attached.
    """
    reply = pb.ProcessingResponse()
    common = reply.request_body.response
    common.clear_route_cache = True
    _fill_headers(common.header_mutation, headers, remove)
    if body is not None:
        common.body_mutation.body = body
    if destination is not None:
        _fill_destination(reply.dynamic_metadata, destination, scores)
    return reply


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
