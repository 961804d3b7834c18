"""BodyRouter: which routing headers a request gets, and which requests it answers itself."""

from __future__ import annotations

import orjson
import pytest

from epp.bbr.catalog import ModelCatalog, ModelEntry, parse_models_flag
from epp.bbr.router import BASE_MODEL_HEADER, ENGINE_HEADER, MODEL_HEADER, ROUTING_HEADERS, BodyRouter, RouteHeaders
from epp.request import RequestError

CHAT = {":path": "/v1/chat/completions"}
VLLM = frozenset({"vllm"})


def body(model: object = "m", **extra: object) -> bytes:
    return orjson.dumps({"model": model, "messages": [{"role": "user", "content": "hi"}], **extra})


def catalog(restricts: bool = True) -> ModelCatalog:
    return ModelCatalog(
        [
            *parse_models_flag("llama,sql-lora=llama"),
            ModelEntry("qwen", "qwen", VLLM),
            ModelEntry("both", "both", frozenset({"vllm", "sglang"})),
        ],
        restricts=restricts,
    )


def route(payload: bytes | None, cat: ModelCatalog | None = None, path: str = "/v1/chat/completions") -> RouteHeaders:
    return BodyRouter(cat).route("r1", {":path": path}, payload)


def rejected(payload: bytes, cat: ModelCatalog | None = None, path: str = "/v1/chat/completions") -> RequestError:
    with pytest.raises(RequestError) as info:
        route(payload, cat, path)
    return info.value


def test_without_a_catalog_every_model_gets_its_header() -> None:
    out = route(body("anything/at-all"))
    assert out.set == {MODEL_HEADER: "anything/at-all"}
    assert out.remove == (BASE_MODEL_HEADER, ENGINE_HEADER)
    assert out.model == "anything/at-all"


@pytest.mark.parametrize(("model", "expected"), [
    ("llama", {MODEL_HEADER: "llama", BASE_MODEL_HEADER: "llama"}),
    ("sql-lora", {MODEL_HEADER: "sql-lora", BASE_MODEL_HEADER: "llama"}),
    ("qwen", {MODEL_HEADER: "qwen", BASE_MODEL_HEADER: "qwen", ENGINE_HEADER: "vllm"}),
    ("both", {MODEL_HEADER: "both", BASE_MODEL_HEADER: "both"}),  # two engines: the route decides
])
def test_catalogued_models_get_base_model_and_engine(model: str, expected: dict[str, str]) -> None:
    out = route(body(model), catalog())
    assert out.set == expected
    assert set(out.remove) == set(ROUTING_HEADERS) - set(expected)


def test_owned_by_picks_the_engine() -> None:
    assert route(body("both", owned_by="SGLang"), catalog()).set[ENGINE_HEADER] == "sglang"
    assert route(body("unlisted", owned_by="vllm")).set == {MODEL_HEADER: "unlisted", ENGINE_HEADER: "vllm"}


def test_owned_by_an_engine_that_does_not_serve_the_model_is_404() -> None:
    error = rejected(body("qwen", owned_by="sglang"), catalog())
    assert (error.status, error.code) == (404, "model_not_found")
    assert "not served by engine `sglang`" in error.message


def test_bad_owned_by_is_400() -> None:
    error = rejected(body("m", owned_by="two words"))
    assert (error.status, error.code) == (400, "invalid_owned_by")


def test_unknown_model_is_openai_404_when_the_catalog_restricts() -> None:
    error = rejected(body("gpt-5"), catalog())
    assert (error.status, error.code, error.error_type) == (404, "model_not_found", "invalid_request_error")
    assert orjson.loads(error.to_json()) == {"error": {
        "message": "The model `gpt-5` does not exist.", "type": "invalid_request_error", "param": None,
        "code": "model_not_found",
    }}


def test_unknown_model_passes_when_the_catalog_only_maps() -> None:
    cat = catalog(restricts=False)
    assert route(body("gpt-5"), cat).set == {MODEL_HEADER: "gpt-5"}
    assert route(body("sql-lora"), cat).set[BASE_MODEL_HEADER] == "llama"


def test_update_swaps_the_catalog() -> None:
    router = BodyRouter(catalog())
    router.update(ModelCatalog(parse_models_flag("new"), restricts=True))
    assert router.route("r", CHAT, body("new")).set[BASE_MODEL_HEADER] == "new"
    with pytest.raises(RequestError):
        router.route("r", CHAT, body("llama"))


@pytest.mark.parametrize(("payload", "code"), [
    (b'{"model": "m", "messages": [', "invalid_json"),
    (b"", "invalid_body"),
    (b"[1, 2]", "invalid_body"),
    (b'{"messages": []}', "model_not_found"),
    (orjson.dumps({"model": 7, "messages": []}), "model_not_found"),
])
def test_broken_inference_bodies_are_400(payload: bytes, code: str) -> None:
    error = rejected(payload, catalog())
    assert (error.status, error.code) == (400, code)


@pytest.mark.parametrize(("model", "code"), [("a\r\nx-evil: 1", "invalid_model"), ("m" * 1025, "invalid_model")])
def test_models_that_cannot_be_a_header_value_are_400(model: str, code: str) -> None:
    error = rejected(body(model))
    assert (error.status, error.code) == (400, code)


def test_non_ascii_model_travels_as_utf8_bytes() -> None:
    value = route(body("modèle-ü")).set[MODEL_HEADER]
    assert value.encode("latin-1") == "modèle-ü".encode()


def test_requests_without_body_or_model_only_lose_client_routing_headers() -> None:
    for out in (route(None, catalog()), route(b'{"purpose": "x"}', catalog(), path="/v1/files"),
                route(b"not json", catalog(), path="/v1/files")):
        assert out.set == {} and out.remove == ROUTING_HEADERS


def test_other_paths_route_on_a_model_if_the_body_names_one() -> None:
    out = route(b'{"model": "sql-lora"}', catalog(), path="/v1/rerank")
    assert out.set == {MODEL_HEADER: "sql-lora", BASE_MODEL_HEADER: "llama"}
