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
    return pb.HeaderMutation(
        set_headers=[
            base_pb2.HeaderValueOption(
                header=base_pb2.HeaderValue(key=k, raw_value=v.encode("latin-1", "replace")), append_action=_OVERWRITE
            )
            for k, v in headers.items()
        ],
        remove_headers=list(remove),
    )


def destination_metadata(destination: str, scores: Mapping[str, float] | None = None) -> struct_pb2.Struct:
    """``{"envoy.lb": {"x-gateway-destination-endpoint": destination}}``: must equal the header. With
    ``scores`` (``--emit-endpoint-scores``) also ``x-gateway-destination-endpoint-scores``: ``{ip:port: score}``
    for every endpoint the primary profile scored, picked or not."""
    md = struct_pb2.Struct()
    lb = md.get_or_create_struct(LB_METADATA_NAMESPACE)
    lb[DESTINATION_HEADER] = destination
    if scores is not None:
        lb.get_or_create_struct(SCORES_KEY).update(scores)
    return md


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
    common = pb.CommonResponse(header_mutation=header_mutation(headers, remove), clear_route_cache=clear_route_cache)
    reply = pb.ProcessingResponse(request_headers=pb.HeadersResponse(response=common))
    if destination is not None:
        reply.dynamic_metadata.CopyFrom(destination_metadata(destination, scores))
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
    common = pb.CommonResponse(header_mutation=header_mutation(headers, remove), clear_route_cache=True)
    if body is not None:
        common.body_mutation.body = body
    reply = pb.ProcessingResponse(request_body=pb.BodyResponse(response=common))
    if destination is not None:
        reply.dynamic_metadata.CopyFrom(destination_metadata(destination, scores))
    return reply


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
