"""Replies are written in place into one message: the same bytes as building the parts apart, and an
answer with nothing to set is still an answer of its kind."""

from __future__ import annotations

from envoy.service.ext_proc.v3 import external_processor_pb2 as pb

from epp.extproc import messages
from tests.extproc.builders import metadata_destination, set_headers, streamed


def test_an_empty_mutation_still_answers_its_phase() -> None:
    reply = messages.response_headers_reply({})
    assert reply.WhichOneof("response") == "response_headers"
    assert reply.response_headers.response.HasField("header_mutation")
    bare = messages.request_headers_reply({})
    assert bare.WhichOneof("response") == "request_headers" and not bare.HasField("dynamic_metadata")
    assert pb.ProcessingResponse.FromString(bare.SerializeToString()).WhichOneof("response") == "request_headers"


def test_headers_removals_destination_and_scores_land_where_envoy_reads_them() -> None:
    lb_metadata = {"envoy.lb": {"x-gateway-destination-endpoint": "10.0.0.1:8000",
                                "x-gateway-destination-endpoint-scores": {"10.0.0.1:8000": 0.5}}}
    reply = messages.request_headers_reply({"x-gateway-destination-endpoint": "10.0.0.1:8000", "x-a": "é"},
                                           remove=["x-forged"], metadata=lb_metadata)
    common = reply.request_headers.response
    raw = {h.header.key: h.header.raw_value for h in common.header_mutation.set_headers}
    assert raw == {"x-gateway-destination-endpoint": b"10.0.0.1:8000", "x-a": "é".encode("latin-1")}
    assert common.clear_route_cache and list(common.header_mutation.remove_headers) == ["x-forged"]
    assert all(h.append_action == h.OVERWRITE_IF_EXISTS_OR_ADD for h in common.header_mutation.set_headers)
    assert metadata_destination(reply) == "10.0.0.1:8000"
    lb = reply.dynamic_metadata.fields["envoy.lb"].struct_value
    assert lb.fields["x-gateway-destination-endpoint-scores"].struct_value.fields["10.0.0.1:8000"].number_value == 0.5
    buffered = messages.buffered_body_reply({"k": "v"}, b"new body", metadata=lb_metadata)
    assert buffered.request_body.response.body_mutation.body == b"new body"
    assert set_headers(buffered.request_body.response) == {"k": "v"} and metadata_destination(buffered) == "10.0.0.1:8000"


def test_streamed_bodies_are_chunked_with_end_of_stream_on_the_last() -> None:
    body = bytes(range(256)) * 600  # 153,600 bytes: three chunks
    replies = list(messages.streamed_body(body, True))
    assert len(replies) == 3
    data, eos = streamed(replies)
    assert data == body and eos == [False, False, True]
    response, eos = streamed(list(messages.streamed_body(b"", True, response=True)), "response_body")
    assert response == b"" and eos == [True]


def test_metadata_written_in_place_equals_the_struct_helpers() -> None:
    """The in-place writer gives the bytes ``Struct.update`` gives, for every value kind plugins report."""
    from google.protobuf import struct_pb2

    metadata = {"envoy.lb": {"x-gateway-destination-endpoint": "10.0.0.1:8000", "scores": {"a": 0.5}},
                "plugin": {"cost": 3, "ok": True, "list": [1, "x"], "none": None}, "empty": {}}
    expected = struct_pb2.Struct()
    for namespace, values in metadata.items():
        expected.get_or_create_struct(namespace).update(values)
    assert messages.dynamic_metadata(metadata) == expected
    assert messages.request_headers_reply({}, metadata=metadata).dynamic_metadata == expected
