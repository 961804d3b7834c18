"""requestHandler parsers: selection by path suffix, and each parser on its API's bytes (gRPC bodies are
encoded by hand from the upstream field numbers, so the descriptors are checked, not assumed)."""

from __future__ import annotations

import orjson
import pytest

from epp.config import ConfigError, load_scheduler_text, parse_config_text, request_parsers
from epp.config import build_scheduler
from epp.request import RequestError, RequestKind
from epp.request.parsers import RequestParsers, default_parsers, make_parser
from epp.request.protos import grpc_frame


def _headers(path: str, **extra: str) -> dict[str, str]:
    return {":path": path, **extra}


def test_default_list_is_openai_anthropic_vllmhttp_chosen_by_path_suffix() -> None:
    parsers = default_parsers()
    assert [p.typed_name.type for p in parsers.parsers] == ["openai-parser", "anthropic-parser", "vllmhttp-parser"]
    assert parsers.select("/v1/messages").typed_name.type == "anthropic-parser"
    assert parsers.select("/openai/v1/chat/completions").typed_name.type == "openai-parser"
    assert parsers.select("/inference/v1/generate").typed_name.type == "vllmhttp-parser"
    assert parsers.select("/v1/models").typed_name.type == "openai-parser"  # the first fallback


def test_no_claim_and_no_fallback_is_a_400_naming_the_parsers() -> None:
    parsers = RequestParsers([make_parser("anthropic-parser", "claude")])
    with pytest.raises(RequestError) as err:
        parsers.parse("r", _headers("/v1/chat/completions"), b"{}")
    assert err.value.status == 400 and "claude" in err.value.message and "/v1/chat/completions" in err.value.message


def test_anthropic_messages() -> None:
    body = {"model": "claude-x", "system": "be brief", "max_tokens": 64, "stream": True,
            "messages": [{"role": "user", "content": "hi"}]}
    request = default_parsers().parse("r", _headers("/v1/messages"), orjson.dumps(body))
    assert (request.kind, request.model, request.stream, request.max_tokens) == (RequestKind.MESSAGES, "claude-x", True, 64)
    assert b"be brief" in request.prompt_bytes and b"hi" in request.prompt_bytes
    for bad, code in (({"model": "m", "messages": []}, "invalid_body"), ({"messages": [{"role": "user"}]}, "model_not_found")):
        with pytest.raises(RequestError) as err:
            default_parsers().parse("r", _headers("/v1/messages"), orjson.dumps(bad))
        assert err.value.status == 400 and err.value.code == code


def test_vllmhttp_generate_takes_token_ids_and_delegates_the_rest_to_openai() -> None:
    parser = RequestParsers([make_parser("vllmhttp-parser")])
    body = {"model": "m", "token_ids": [1, 2, 3], "sampling_params": {"max_tokens": 7}, "stream": True}
    request = parser.parse("r", _headers("/inference/v1/generate"), orjson.dumps(body))
    assert (request.prompt_token_ids, request.max_tokens, request.stream, request.model) == ([1, 2, 3], 7, True, "m")
    with pytest.raises(RequestError, match="non-empty token_ids"):
        parser.parse("r", _headers("/inference/v1/generate"), b'{"model": "m", "token_ids": []}')
    chat = parser.parse("r", _headers("/v1/chat/completions"), b'{"model": "m", "messages": []}')
    assert chat.kind is RequestKind.CHAT_COMPLETIONS


# vllm.grpc.engine.GenerateRequest{request_id: "r", text: "hi", sampling_params{max_tokens: 5}, stream: true}
GENERATE_TEXT = bytes.fromhex("0a0172" "1a026869" "22024005" "2801")
# ... {tokenized{input_ids: [1, 2, 300]}} (packed), and the same unpacked (both are valid wire forms)
GENERATE_TOKENS = bytes.fromhex("0a0172" "1206" "1204" "0102ac02")
GENERATE_TOKENS_UNPACKED = bytes.fromhex("0a0172" "1207" "1001" "1002" "10ac02")
VLLM_GENERATE = "/vllm.grpc.engine.VllmEngine/Generate"


def test_vllmgrpc_decodes_the_framed_generate_request() -> None:
    parser = RequestParsers([make_parser("vllmgrpc-parser")])
    headers = _headers(VLLM_GENERATE, **{"content-type": "application/grpc", "x-gateway-model-name-rewrite": "llama"})
    text = parser.parse("r", headers, grpc_frame(GENERATE_TEXT))
    assert (text.kind, text.prompt_bytes, text.max_tokens, text.stream) == (RequestKind.COMPLETIONS, b"hi", 5, True)
    assert text.body is None and text.target_model == "llama"  # the model only comes from a rewrite header
    for payload in (GENERATE_TOKENS, GENERATE_TOKENS_UNPACKED):
        tokens = parser.parse("r", headers, grpc_frame(payload))
        assert tokens.prompt_token_ids == [1, 2, 300] and tokens.max_tokens is None and not tokens.stream
    embed = parser.parse("r", _headers("/vllm.grpc.engine.VllmEngine/Embed"), grpc_frame(bytes.fromhex("0a0172" "1204" "12020809")))
    assert (embed.kind, embed.prompt_token_ids) == (RequestKind.EMBEDDINGS, [8, 9])
    other = parser.parse("r", _headers("/vllm.grpc.engine.VllmEngine/HealthCheck"), grpc_frame(b""))
    assert other.kind is RequestKind.OTHER


@pytest.mark.parametrize(("body", "why"), [
    (b"\x00\x00", "invalid gRPC frame"),
    (b"\x01" + grpc_frame(GENERATE_TEXT)[1:], "compressed"),
    (grpc_frame(GENERATE_TEXT)[:-2], "incomplete gRPC payload"),
    (grpc_frame(b"\xff\xff\xff"), "not a GenerateRequest"),
    (grpc_frame(bytes.fromhex("0a0172")), "neither text nor tokenized"),
])
def test_vllmgrpc_bad_bodies_are_400(body: bytes, why: str) -> None:
    with pytest.raises(RequestError) as err:
        RequestParsers([make_parser("vllmgrpc-parser")]).parse("r", _headers(VLLM_GENERATE), body)
    assert err.value.status == 400 and why in err.value.message


def _vertex(json_body: bytes) -> bytes:
    http_body = b"\x12" + bytes([len(json_body)]) + json_body  # HttpBody{data}
    return grpc_frame(b"\x0a\x01e" + b"\x12" + bytes([len(http_body)]) + http_body)  # {endpoint: "e", http_body}


def test_vertexai_chat_completions_carry_openai_json_in_an_http_body() -> None:
    parser = RequestParsers([make_parser("vertexai-parser")])
    path = "/google.cloud.aiplatform.v1beta1.PredictionService/ChatCompletions"
    request = parser.parse("r", _headers(path), _vertex(b'{"model":"gemma","messages":[{"role":"user","content":"x"}]}'))
    assert (request.kind, request.model, request.path, request.body) == (RequestKind.CHAT_COMPLETIONS, "gemma", path, None)
    raw = parser.parse("r", _headers(path.replace("ChatCompletions", "RawPredict")), _vertex(b'{"model":"g","input":"x"}'))
    assert raw.kind is RequestKind.RESPONSES
    assert parser.parse("r", _headers(path.replace("ChatCompletions", "Predict")), b"junk").kind is RequestKind.OTHER
    with pytest.raises(RequestError, match="model not found"):
        parser.parse("r", _headers(path), _vertex(b'{"messages":[]}'))


def test_passthrough_never_reads_the_body() -> None:
    request = RequestParsers([make_parser("passthrough-parser")]).parse(
        "r", _headers("/v1/chat/completions", **{"x-gateway-inference-objective": "gold"}), b"\xff not json")
    assert (request.kind, request.model, request.objective) == (RequestKind.OTHER, "", "gold")


CONFIG = """\
apiVersion: llm-d.ai/v1alpha1
kind: EndpointPickerConfig
plugins:
- {type: queue-scorer}
- {name: grpc, type: vllmgrpc-parser}
- {name: claude, type: anthropic-parser}
requestHandler:
  parsers: [{pluginRef: claude}, {pluginRef: grpc}]
"""


def test_config_request_handler_builds_the_parsers_in_order_and_rejects_non_parsers() -> None:
    config = parse_config_text(CONFIG)
    parsers = request_parsers(config, build_scheduler(config))
    assert [p.typed_name.name for p in parsers.parsers] == ["claude", "grpc"]
    wrong = parse_config_text(CONFIG.replace("{pluginRef: grpc}", "{pluginRef: queue-scorer}"))
    with pytest.raises(ConfigError, match=r"^requestHandler.parsers\[1\].pluginRef: 'queue-scorer' is not a request parser"):
        request_parsers(wrong, build_scheduler(wrong))
    with pytest.raises(ConfigError, match="unknown parameter"):
        load_scheduler_text(CONFIG.replace("type: anthropic-parser}", "type: anthropic-parser, parameters: {x: 1}}"))
