"""Model catalogs: --models parsing, merging of entries, conflicts."""

from __future__ import annotations

import pytest

from epp.bbr.catalog import CatalogError, ModelCatalog, ModelEntry, engine_name, parse_models_flag


def test_models_flag_names_and_adapters() -> None:
    entries = parse_models_flag(" llama-8b , sql-lora=llama-8b,, qwen:32b ")
    catalog = ModelCatalog(entries, restricts=True)
    assert catalog.get("llama-8b") == ModelEntry("llama-8b", "llama-8b")
    assert catalog.get("sql-lora") == ModelEntry("sql-lora", "llama-8b")
    assert catalog.get("qwen:32b") == ModelEntry("qwen:32b", "qwen:32b")  # ':' is part of some model names
    assert catalog.get("other") is None
    assert len(catalog) == 3
    assert catalog.describe() == "2 base model(s), 1 adapter(s); unknown models get 404"


def test_adapter_makes_its_base_known() -> None:
    catalog = ModelCatalog(parse_models_flag("a=base"))
    assert catalog.get("base") == ModelEntry("base", "base")


@pytest.mark.parametrize("text", ["=base", "adapter=", "a=  "])
def test_models_flag_rejects_half_items(text: str) -> None:
    with pytest.raises(CatalogError, match="ADAPTER=BASE"):
        parse_models_flag(text)


def test_empty_flag_is_no_models() -> None:
    assert parse_models_flag("") == []
    assert parse_models_flag(" , ") == []


def test_entries_for_one_model_unite_their_engines() -> None:
    catalog = ModelCatalog([
        ModelEntry("m", "m", frozenset({"vllm"})),
        ModelEntry("m", "m", frozenset({"sglang"})),
    ])
    assert catalog.get("m") == ModelEntry("m", "m", frozenset({"vllm", "sglang"}))


def test_an_entry_without_engines_lifts_the_engine_restriction() -> None:
    catalog = ModelCatalog([ModelEntry("m", "m", frozenset({"vllm"})), ModelEntry("m", "m")])
    assert catalog.get("m") == ModelEntry("m", "m")


def test_an_adapter_on_two_bases_is_an_error() -> None:
    with pytest.raises(CatalogError, match="two base models"):
        ModelCatalog([ModelEntry("lora", "a"), ModelEntry("lora", "b")])


def test_unconfigured_catalog_does_not_restrict() -> None:
    catalog = ModelCatalog()
    assert not catalog.restricts and len(catalog) == 0
    assert catalog.describe().endswith("every model passes")


@pytest.mark.parametrize(("raw", "name"), [("vLLM", "vllm"), (" sglang ", "sglang"), ("trt-llm.v2", "trt-llm.v2")])
def test_engine_names_are_normalised(raw: str, name: str) -> None:
    assert engine_name(raw) == name


@pytest.mark.parametrize("raw", ["", "two words", "-x", "vl\nlm"])
def test_bad_engine_names(raw: str) -> None:
    with pytest.raises(CatalogError):
        engine_name(raw)
