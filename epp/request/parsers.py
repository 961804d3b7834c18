"""Request parsers: the reference's ``requestHandler.parsers`` plugins, each turning one API's request
into an ``LLMRequest`` (llm-d-router ``pkg/epp/framework/plugins/requesthandling/parsers``).

Selection follows the reference: the first configured parser that claims the request path (by suffix)
parses it; a path no parser claims goes to the first parser that accepts any path (a fallback); with
none, the request is a 400. Without ``requestHandler`` the reference's default list applies:
``openai-parser``, ``anthropic-parser``, ``vllmhttp-parser``.

* ``openai-parser``: OpenAI JSON (``epp.request.parse.parse_request``): completions, chat, responses,
  embeddings; any other path passes through unparsed.
* ``anthropic-parser``: ``…/messages`` (Anthropic Messages API): ``model`` and a non-empty ``messages``;
  system, tools and messages are the prefix-hashed prompt.
* ``vllmhttp-parser``: ``…/inference/v1/generate`` (vLLM's token-in generate API: non-empty
  ``token_ids``, ``sampling_params.max_tokens``), everything else as ``openai-parser``.
* ``vllmgrpc-parser``: vLLM's gRPC ``VllmEngine/Generate`` and ``/Embed`` carried through Envoy: the
  gRPC-framed protobuf body is decoded (text or token ids, stream, max_tokens); other gRPC methods
  pass through. A gRPC request names no model, so the model comes only from a rewrite header.
* ``vertexai-parser``: Vertex AI ``PredictionService/ChatCompletions`` (OpenAI chat JSON inside an
  ``HttpBody``), ``RawPredict`` and ``StreamRawPredict`` (parsed as ``/responses``); other methods pass through.
* ``passthrough-parser``: any path, body never read (no model, no prompt: prefix scorers see nothing).

Parsers never rewrite the body; a body that is not JSON (gRPC, passthrough) is not offered to the
model-rewrite step (``LLMRequest.body`` is None).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from epp.request.errors import RequestError
from epp.request.parse import envelope, extract_fields, load_object, parse_request, request_path, require_model
from epp.request import protos
from epp.request.types import LLMRequest, RequestKind
from epp.plugin.typed_name import TypedName
from epp.plugin.params import NoParams, decode_params
from epp.plugin.registry import PluginHandle, PluginType

OPENAI_PARSER = "openai-parser"
ANTHROPIC_PARSER = "anthropic-parser"
VLLM_HTTP_PARSER = "vllmhttp-parser"
VLLM_GRPC_PARSER = "vllmgrpc-parser"
VERTEXAI_PARSER = "vertexai-parser"
PASSTHROUGH_PARSER = "passthrough-parser"

OPENAI_PATHS = ("/chat/completions", "/completions", "/responses", "/embeddings")
MESSAGES_PATH = "/messages"
GENERATE_PATH = "/inference/v1/generate"
VLLM_GRPC_GENERATE = "/vllm.grpc.engine.VllmEngine/Generate"
VLLM_GRPC_EMBED = "/vllm.grpc.engine.VllmEngine/Embed"
VERTEX_CHAT = "PredictionService/ChatCompletions"
VERTEX_STREAM_RAW = "PredictionService/StreamRawPredict"
VERTEX_RAW = "PredictionService/RawPredict"


class Parser(Protocol):
    """``claims``: path suffixes this parser is chosen for; ``fallback``: it also takes unclaimed paths."""

    typed_name: TypedName
    claims: tuple[str, ...]
    fallback: bool

    def parse(self, request_id: str, headers: Mapping[str, str], body: bytes) -> LLMRequest: ...


@dataclass(slots=True)
class OpenAIParser:
    typed_name: TypedName
    claims: tuple[str, ...] = OPENAI_PATHS
    fallback: bool = True

    def parse(self, request_id: str, headers: Mapping[str, str], body: bytes) -> LLMRequest:
        return parse_request(request_id, headers, body)


@dataclass(slots=True)
class AnthropicParser:
    typed_name: TypedName
    claims: tuple[str, ...] = (MESSAGES_PATH,)
    fallback: bool = False

    def parse(self, request_id: str, headers: Mapping[str, str], body: bytes) -> LLMRequest:
        data = load_object(body)
        require_model(data)
        fields = extract_fields(RequestKind.MESSAGES, data)
        return envelope(request_id, headers, request_path(headers), RequestKind.MESSAGES, data, fields)


@dataclass(slots=True)
class VllmHTTPParser:
    typed_name: TypedName
    claims: tuple[str, ...] = (GENERATE_PATH, *OPENAI_PATHS)
    fallback: bool = True

    def parse(self, request_id: str, headers: Mapping[str, str], body: bytes) -> LLMRequest:
        path = request_path(headers)
        if not path.rstrip("/").endswith(GENERATE_PATH):
            return parse_request(request_id, headers, body)
        data = load_object(body)
        token_ids = data.get("token_ids")
        if not isinstance(token_ids, list) or not token_ids or not all(_is_int(t) for t in token_ids):
            raise RequestError(400, "invalid generate request: must have non-empty token_ids", code="invalid_body")
        sampling = data.get("sampling_params")
        max_tokens = sampling.get("max_tokens") if isinstance(sampling, dict) else None
        fields = {"prompt_token_ids": list(token_ids), "stream": data.get("stream") is True,
                  "max_tokens": max_tokens if _is_int(max_tokens) else None}
        return envelope(request_id, headers, path, RequestKind.COMPLETIONS, data, fields)


@dataclass(slots=True)
class VllmGRPCParser:
    typed_name: TypedName
    claims: tuple[str, ...] = (VLLM_GRPC_GENERATE, VLLM_GRPC_EMBED)
    fallback: bool = True

    def parse(self, request_id: str, headers: Mapping[str, str], body: bytes) -> LLMRequest:
        path = request_path(headers)
        if path.endswith(VLLM_GRPC_GENERATE):
            msg: Any = _decode(protos.GenerateRequest, body)
            fields: dict[str, Any] = {"stream": msg.stream, "max_tokens": msg.sampling_params.max_tokens or None}
            which = msg.WhichOneof("input")
            if which == "text":
                fields["prompt_bytes"] = msg.text.encode()
            elif which == "tokenized":
                fields["prompt_token_ids"] = list(msg.tokenized.input_ids)
            else:
                raise RequestError(400, "GenerateRequest has neither text nor tokenized input", code="invalid_body")
            return envelope(request_id, headers, path, RequestKind.COMPLETIONS, None, fields)
        if path.endswith(VLLM_GRPC_EMBED):
            embed: Any = _decode(protos.EmbedRequest, body)
            if not embed.HasField("tokenized"):
                raise RequestError(400, "EmbedRequest has no tokenized input", code="invalid_body")
            fields = {"prompt_token_ids": list(embed.tokenized.input_ids)}
            return envelope(request_id, headers, path, RequestKind.EMBEDDINGS, None, fields)
        return passthrough(request_id, headers)


@dataclass(slots=True)
class VertexAIParser:
    typed_name: TypedName
    claims: tuple[str, ...] = (VERTEX_CHAT, VERTEX_STREAM_RAW, VERTEX_RAW)
    fallback: bool = True

    def parse(self, request_id: str, headers: Mapping[str, str], body: bytes) -> LLMRequest:
        path = request_path(headers)
        if path.endswith(VERTEX_CHAT):
            inner = "/chat/completions"
        elif path.endswith((VERTEX_STREAM_RAW, VERTEX_RAW)):
            inner = "/responses"
        else:
            return passthrough(request_id, headers)
        msg: Any = _decode(protos.HttpBodyRequest, body)
        if not msg.HasField("http_body"):
            raise RequestError(400, f"{path.rsplit('/', 1)[-1]} request has no http_body", code="invalid_body")
        request = parse_request(request_id, {**headers, ":path": inner}, msg.http_body.data)
        request.path, request.body, request.headers = path, None, dict(headers)
        return request


@dataclass(slots=True)
class PassthroughParser:
    typed_name: TypedName
    claims: tuple[str, ...] = ()
    fallback: bool = True

    def parse(self, request_id: str, headers: Mapping[str, str], body: bytes) -> LLMRequest:
        return passthrough(request_id, headers)


def passthrough(request_id: str, headers: Mapping[str, str]) -> LLMRequest:
    """A request routed on its headers alone (the reference's Skip)."""
    return envelope(request_id, headers, request_path(headers), RequestKind.OTHER, None, {})


def _decode(cls: type, body: bytes) -> object:
    try:
        return protos.decode(cls, body)
    except ValueError as err:
        raise RequestError(400, f"invalid or unsupported gRPC payload: {err}", code="invalid_body") from None


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


class RequestParsers:
    """The configured parsers in order; ``parse`` picks one per request as the reference does."""

    def __init__(self, parsers: Sequence[Parser]) -> None:
        if not parsers:
            raise ValueError("at least one request parser is needed")
        self.parsers = tuple(parsers)

    def select(self, path: str) -> Parser:
        trimmed = path.rstrip("/")
        for parser in self.parsers:
            if any(trimmed.endswith(suffix) for suffix in parser.claims):
                return parser
        for parser in self.parsers:
            if parser.fallback:
                return parser
        names = ", ".join(p.typed_name.name for p in self.parsers)
        raise RequestError(400, f"no configured request parser ({names}) handles path {path}", code="unsupported_path")

    def parse(self, request_id: str, headers: Mapping[str, str], body: bytes) -> LLMRequest:
        return self.select(request_path(headers)).parse(request_id, headers, body)


_CLASSES: dict[str, type] = {
    OPENAI_PARSER: OpenAIParser, ANTHROPIC_PARSER: AnthropicParser, VLLM_HTTP_PARSER: VllmHTTPParser,
    VLLM_GRPC_PARSER: VllmGRPCParser, VERTEXAI_PARSER: VertexAIParser, PASSTHROUGH_PARSER: PassthroughParser,
}
DEFAULT_PARSERS = (OPENAI_PARSER, ANTHROPIC_PARSER, VLLM_HTTP_PARSER)  # llm-d-router's default list


def make_parser(parser_type: str, name: str | None = None) -> Parser:
    parser: Parser = _CLASSES[parser_type](TypedName(parser_type, name or parser_type))
    return parser


def default_parsers() -> RequestParsers:
    return RequestParsers([make_parser(t) for t in DEFAULT_PARSERS])


def _factory(parser_type: str) -> Any:
    def factory(name: str, params: Mapping[str, Any], handle: PluginHandle) -> Parser:
        decode_params(NoParams, params)  # the reference's parsers take no parameters
        return make_parser(parser_type, name)

    return factory


PARSER_PLUGINS: tuple[PluginType, ...] = tuple(PluginType(t, _factory(t)) for t in _CLASSES)


def is_parser(plugin: object) -> bool:
    return isinstance(plugin, tuple(_CLASSES.values()))


