"""The few protobuf messages the gRPC parsers read, declared as descriptors at import (no generated code,
no .proto build step) in a private pool so they never clash with a real vLLM or Google client.

Field numbers follow the upstream definitions; fields epp does not read are left out, which protobuf
skips on decode:

* ``vllm.grpc.engine`` (vLLM ``vllm/grpc/vllm_engine.proto``): ``GenerateRequest`` {request_id 1,
  tokenized 2, text 3, sampling_params 4, stream 5}, ``TokenizedInput`` {original_text 1, input_ids 2},
  ``SamplingParams`` {max_tokens 8}, ``EmbedRequest`` {request_id 1, tokenized 2}; responses
  ``GenerateResponse`` {chunk 1, complete 2}, ``GenerateStreamChunk`` {prompt_tokens 2, completion_tokens 3,
  cached_tokens 4}, ``GenerateComplete`` {prompt_tokens 3, completion_tokens 4, cached_tokens 5},
  ``EmbedResponse`` {prompt_tokens 2};
* ``google.cloud.aiplatform.v1beta1`` ``ChatCompletionsRequest`` / ``RawPredictRequest`` /
  ``StreamRawPredictRequest`` {endpoint 1, http_body 2} and ``google.api.HttpBody`` {content_type 1, data 2}.
"""

from __future__ import annotations

import struct

from google.protobuf import descriptor_pb2, descriptor_pool, message, message_factory

_F = descriptor_pb2.FieldDescriptorProto
GRPC_FRAME_HEADER = 5  # 1 byte compressed flag + 4 bytes big-endian length


def _message(file: descriptor_pb2.FileDescriptorProto, name: str, *fields: tuple[str, int, int, int, str]) -> None:
    msg = file.message_type.add(name=name)
    for field_name, number, kind, label, type_name in fields:
        field = msg.field.add(name=field_name, number=number, type=kind, label=label)
        if type_name:
            field.type_name = type_name


_OPT, _REP = _F.LABEL_OPTIONAL, _F.LABEL_REPEATED


def _build() -> dict[str, type[message.Message]]:
    pool = descriptor_pool.DescriptorPool()
    vllm = descriptor_pb2.FileDescriptorProto(name="epp/vllm_engine.proto", package="vllm.grpc.engine", syntax="proto3")
    _message(vllm, "TokenizedInput", ("original_text", 1, _F.TYPE_STRING, _OPT, ""),
             ("input_ids", 2, _F.TYPE_UINT32, _REP, ""))
    _message(vllm, "SamplingParams", ("max_tokens", 8, _F.TYPE_UINT32, _OPT, ""))
    _message(vllm, "GenerateRequest", ("request_id", 1, _F.TYPE_STRING, _OPT, ""),
             ("tokenized", 2, _F.TYPE_MESSAGE, _OPT, ".vllm.grpc.engine.TokenizedInput"),
             ("text", 3, _F.TYPE_STRING, _OPT, ""),
             ("sampling_params", 4, _F.TYPE_MESSAGE, _OPT, ".vllm.grpc.engine.SamplingParams"),
             ("stream", 5, _F.TYPE_BOOL, _OPT, ""))
    _message(vllm, "EmbedRequest", ("request_id", 1, _F.TYPE_STRING, _OPT, ""),
             ("tokenized", 2, _F.TYPE_MESSAGE, _OPT, ".vllm.grpc.engine.TokenizedInput"))
    _message(vllm, "GenerateStreamChunk", ("prompt_tokens", 2, _F.TYPE_UINT32, _OPT, ""),
             ("completion_tokens", 3, _F.TYPE_UINT32, _OPT, ""), ("cached_tokens", 4, _F.TYPE_UINT32, _OPT, ""))
    _message(vllm, "GenerateComplete", ("prompt_tokens", 3, _F.TYPE_UINT32, _OPT, ""),
             ("completion_tokens", 4, _F.TYPE_UINT32, _OPT, ""), ("cached_tokens", 5, _F.TYPE_UINT32, _OPT, ""))
    _message(vllm, "GenerateResponse",
             ("chunk", 1, _F.TYPE_MESSAGE, _OPT, ".vllm.grpc.engine.GenerateStreamChunk"),
             ("complete", 2, _F.TYPE_MESSAGE, _OPT, ".vllm.grpc.engine.GenerateComplete"))
    _message(vllm, "EmbedResponse", ("prompt_tokens", 2, _F.TYPE_UINT32, _OPT, ""))
    # `input` and `response` are oneofs upstream: declared so WhichOneof tells the cases apart.
    generate = next(m for m in vllm.message_type if m.name == "GenerateRequest")
    generate.oneof_decl.add(name="input")
    generate.field[1].oneof_index = 0
    generate.field[2].oneof_index = 0
    response = next(m for m in vllm.message_type if m.name == "GenerateResponse")
    response.oneof_decl.add(name="response")
    for field in response.field:
        field.oneof_index = 0
    pool.Add(vllm)

    vertex = descriptor_pb2.FileDescriptorProto(name="epp/vertex.proto", package="epp.vertex", syntax="proto3")
    _message(vertex, "HttpBody", ("content_type", 1, _F.TYPE_STRING, _OPT, ""), ("data", 2, _F.TYPE_BYTES, _OPT, ""))
    _message(vertex, "HttpBodyRequest", ("endpoint", 1, _F.TYPE_STRING, _OPT, ""),
             ("http_body", 2, _F.TYPE_MESSAGE, _OPT, ".epp.vertex.HttpBody"))
    pool.Add(vertex)
    names = ["vllm.grpc.engine.GenerateRequest", "vllm.grpc.engine.EmbedRequest", "vllm.grpc.engine.TokenizedInput",
             "vllm.grpc.engine.SamplingParams", "vllm.grpc.engine.GenerateResponse", "vllm.grpc.engine.EmbedResponse",
             "epp.vertex.HttpBodyRequest", "epp.vertex.HttpBody"]
    return {n.rsplit(".", 1)[1]: message_factory.GetMessageClass(pool.FindMessageTypeByName(n)) for n in names}


_CLASSES = _build()
GenerateRequest = _CLASSES["GenerateRequest"]
EmbedRequest = _CLASSES["EmbedRequest"]
TokenizedInput = _CLASSES["TokenizedInput"]
SamplingParams = _CLASSES["SamplingParams"]
GenerateResponse = _CLASSES["GenerateResponse"]
EmbedResponse = _CLASSES["EmbedResponse"]
# Vertex's ChatCompletions, RawPredict and StreamRawPredict requests share this shape.
HttpBodyRequest = _CLASSES["HttpBodyRequest"]
HttpBody = _CLASSES["HttpBody"]


def grpc_message(frame: bytes) -> bytes:
    """The first message of a length-prefixed gRPC body; ``ValueError`` if short or compressed (as upstream)."""
    if len(frame) < GRPC_FRAME_HEADER:
        raise ValueError(f"invalid gRPC frame: {len(frame)} bytes, need at least {GRPC_FRAME_HEADER}")
    if frame[0] != 0:
        raise ValueError("compressed gRPC payload is not supported")
    (length,) = struct.unpack(">I", frame[1:GRPC_FRAME_HEADER])
    if len(frame) < GRPC_FRAME_HEADER + length:
        raise ValueError(f"incomplete gRPC payload: header says {length} bytes, {len(frame) - GRPC_FRAME_HEADER} present")
    return frame[GRPC_FRAME_HEADER:GRPC_FRAME_HEADER + length]


def grpc_frame(payload: bytes) -> bytes:
    """``payload`` as one uncompressed gRPC message (for tests and the simulator's gRPC clients)."""
    return b"\x00" + struct.pack(">I", len(payload)) + payload


def decode(cls: type[message.Message], frame: bytes) -> message.Message:
    """One framed message of type ``cls``; ``ValueError`` on a bad frame or bytes that are not that message."""
    msg = cls()
    try:
        msg.ParseFromString(grpc_message(frame))
    except message.DecodeError as err:
        raise ValueError(f"not a {cls.DESCRIPTOR.name}: {err}") from None
    return msg
