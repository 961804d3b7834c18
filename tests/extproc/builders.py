"""Client-side ext_proc messages as Envoy sends them, and readers for the picker's replies."""

from __future__ import annotations

import random

import orjson
from envoy.config.core.v3 import base_pb2
from envoy.extensions.filters.http.ext_proc.v3.processing_mode_pb2 import ProcessingMode
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb
from google.protobuf import struct_pb2

from epp._util.clock import VirtualClock
from epp.config import load_scheduler_text
from epp.datastore import Datastore, Endpoint
from epp.director import Director
from epp.config.presets import build_preset
from epp.telemetry import Telemetry

DUPLEX = ProcessingMode.FULL_DUPLEX_STREAMED
BUFFERED = ProcessingMode.BUFFERED
CHAT_BODY = orjson.dumps({"model": "m", "messages": [{"role": "user", "content": "hello"}]})


def make_director(*hostports: str, clock: VirtualClock | None = None, config: str | None = None) -> Director:
    """A director over ``hostports`` with the least-inflight preset, or the EndpointPickerConfig YAML ``config``."""
    store = Datastore(clock or VirtualClock())
    rng = random.Random(7)
    scheduler = build_preset("least-inflight") if config is None else load_scheduler_text(config, clock=store.clock, rng=rng)
    scheduler.attach(store)
    for hp in hostports:
        host, port = hp.rsplit(":", 1)
        store.upsert(Endpoint(hp, host.strip("[]"), int(port)))
    store.mark_synced()
    return Director(store, scheduler, Telemetry(store), clock=store.clock, rng=rng)


def request_headers(
    path: str = "/v1/chat/completions",
    *,
    eos: bool = False,
    mode: int | None = DUPLEX,
    response_mode: int = DUPLEX,
    extra: dict[str, str] | None = None,
    method: str = "POST",
) -> pb.ProcessingRequest:
    values = {":path": path, ":method": method, ":authority": "gw", "x-request-id": "req-1", **(extra or {})}
    hmap = base_pb2.HeaderMap(headers=[base_pb2.HeaderValue(key=k, raw_value=v.encode()) for k, v in values.items()])
    msg = pb.ProcessingRequest(request_headers=pb.HttpHeaders(headers=hmap, end_of_stream=eos))
    if mode is not None:
        msg.protocol_config.request_body_mode = mode  # type: ignore[assignment]
        msg.protocol_config.response_body_mode = response_mode  # type: ignore[assignment]
    return msg


def request_body(body: bytes, eos: bool = False, subset: object = None) -> pb.ProcessingRequest:
    msg = pb.ProcessingRequest(request_body=pb.HttpBody(body=body, end_of_stream=eos))
    if subset is not None:
        hint = struct_pb2.Struct()
        hint.update({"x-gateway-destination-endpoint-subset": subset})
        msg.metadata_context.filter_metadata["envoy.lb.subset_hint"].CopyFrom(hint)
    return msg


def chunked(body: bytes, size: int, empty_final: bool = False) -> list[pb.ProcessingRequest]:
    parts = [body[i:i + size] for i in range(0, len(body), size)]
    if empty_final:
        return [request_body(p) for p in parts] + [request_body(b"", eos=True)]
    return [request_body(p, eos=i == len(parts) - 1) for i, p in enumerate(parts)]


def response_headers(
    content_type: str = "application/json", eos: bool = False, lb_metadata: dict[str, object] | None = None,
    status: int = 200,
) -> pb.ProcessingRequest:
    """``lb_metadata``: the ``envoy.lb`` namespace Envoy forwards in the response phase (e.g. the served endpoint)."""
    hmap = base_pb2.HeaderMap(headers=[
        base_pb2.HeaderValue(key=":status", raw_value=str(status).encode()),
        base_pb2.HeaderValue(key="content-type", raw_value=content_type.encode()),
    ])
    msg = pb.ProcessingRequest(response_headers=pb.HttpHeaders(headers=hmap, end_of_stream=eos))
    if lb_metadata is not None:
        lb = struct_pb2.Struct()
        lb.update(lb_metadata)
        msg.metadata_context.filter_metadata["envoy.lb"].CopyFrom(lb)
    return msg


def response_body(body: bytes, eos: bool = False) -> pb.ProcessingRequest:
    return pb.ProcessingRequest(response_body=pb.HttpBody(body=body, end_of_stream=eos))


def set_headers(common: pb.CommonResponse) -> dict[str, str]:
    return {h.header.key: h.header.raw_value.decode() for h in common.header_mutation.set_headers}


def metadata_destination(reply: pb.ProcessingResponse) -> str:
    return reply.dynamic_metadata.fields["envoy.lb"].struct_value.fields["x-gateway-destination-endpoint"].string_value


def streamed(replies: list[pb.ProcessingResponse], field: str = "request_body") -> tuple[bytes, list[bool]]:
    """Concatenated streamed_response bytes and each chunk's end_of_stream flag."""
    chunks = [getattr(r, field).response.body_mutation.streamed_response for r in replies if r.HasField(field)]
    return b"".join(c.body for c in chunks), [c.end_of_stream for c in chunks]


def immediate(reply: pb.ProcessingResponse) -> tuple[int, dict[str, str], dict]:
    ir = reply.immediate_response
    headers = {h.header.key: h.header.raw_value.decode() for h in ir.headers.set_headers}
    return ir.status.code, headers, orjson.loads(ir.body)
