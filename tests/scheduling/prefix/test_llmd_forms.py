"""llm-d's tokenizer and precise-prefix forms load unchanged (real configs from llm-d's repositories,
``tests/data/llmd-configs``) and mean what they say in epp."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from epp.config import load_scheduler_text
from epp.config.decode import ConfigError
from epp.contracts.datalayer import SubscriberMode
from epp.scheduling.prefix.llmd import TokenProducer
from epp.scheduling.prefix.precise_producer import PrecisePrefixCacheProducer
from epp.scheduling.scheduler import Scheduler
from epp.tokenizer.hf import HFTokenizer
from epp.tokenizer.source import ModelTokenizers

CONFIGS = Path(__file__).parents[2] / "data" / "llmd-configs"
TINY = Path(__file__).parents[2] / "data" / "vllm-0.32-cpu" / "tiny-llama"
HEADER = "apiVersion: llm-d.ai/v1alpha1\nkind: EndpointPickerConfig\nplugins:\n"


@pytest.fixture(autouse=True)
def _offline(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # never a download in tests
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("LOCAL_TOKENIZER_DIR", str(tmp_path / "models"))


def precise(scheduler: Scheduler) -> PrecisePrefixCacheProducer:
    return next(p for p in scheduler.plugins if isinstance(p, PrecisePrefixCacheProducer))


def test_the_deprecated_all_in_one_scorer_with_a_uds_pool(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        scheduler = load_scheduler_text((CONFIGS / "precise-prefix-cache-routing.yaml").read_text())
    producer = precise(scheduler)
    assert producer.params.block_size_tokens == 64
    (feed,) = scheduler.data_needs.kv_event_feeds
    assert feed.view is producer.precise
    assert feed.mode is SubscriberMode.CONNECT and producer.precise_params.kv_events_port == 5556  # discoverPods
    assert producer.precise_params.topic_filter == "kv@"
    assert isinstance(producer.tokenizers, ModelTokenizers) and producer.tokenizers.model == "Qwen/Qwen3-32B"
    assert any("tokenizer-uds.socket" in r.getMessage() for r in caplog.records)  # not called: said once
    scorer = next(p for p in scheduler.plugins if p.typed_name.type == "precise-prefix-cache-scorer")
    assert scorer.producer is producer  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("name", "mode"),
    [("sim-epp-kvcache-config.yaml", SubscriberMode.BIND),  # zmqEndpoint: centralized, engines connect to epp
     ("epp-precise-prefix-cache-config.yaml", SubscriberMode.CONNECT)],  # llm-d's default: per pod, 5557
)  # fmt: skip
def test_token_producer_configs_pin_the_model(name: str, mode: SubscriberMode) -> None:
    scheduler = load_scheduler_text((CONFIGS / name).read_text())
    producer = precise(scheduler)
    token_producer = next(p for p in scheduler.plugins if isinstance(p, TokenProducer))
    assert producer.tokenizers is token_producer.tokenizers
    assert [f.mode for f in scheduler.data_needs.kv_event_feeds] == [mode]
    assert producer.precise_params.bind_endpoint == "tcp://*:5557" and producer.precise_params.kv_events_port == 5557


def test_a_token_producer_for_a_local_model_tokenizes_with_it() -> None:
    config = HEADER + (
        f"- {{type: token-producer, parameters: {{modelName: '{TINY}', vllm: {{url: 'http://render:8000'}}}}}}\n"
        "- {type: precise-prefix-cache-producer, parameters: {tokenProcessorConfig: {blockSize: 128},"
        " kvEventsConfig: {zmqEndpoint: 'tcp://0.0.0.0:5557', topicFilter: ''}}}\n"
    )
    producer = precise(load_scheduler_text(config))
    assert isinstance(producer.tokenizers.for_model("served-alias"), HFTokenizer)
    assert producer.precise_params.topic_filter == ""
    assert producer.params.block_size_tokens == 128


def test_an_unreachable_model_falls_back_with_one_warning(caplog: pytest.LogCaptureFixture) -> None:
    config = HEADER + "- {type: tokenizer, parameters: {modelName: acme/absent}}\n- {type: precise-prefix-cache-producer}\n"
    producer = precise(load_scheduler_text(config))
    with caplog.at_level(logging.WARNING):
        assert producer.tokenizers.for_model("acme/absent") is None  # approximate, not a wrong tokenizer
        assert producer.tokenizers.for_model("acme/absent") is None
    assert len([r for r in caplog.records if "acme/absent" in r.getMessage()]) == 1


@pytest.mark.parametrize(
    ("plugins", "path"),
    [
        ("- {type: token-producer, parameters: {vllm: {url: 'http://x'}}}\n", "plugins[0].parameters.modelName"),
        ("- {type: token-producer, parameters: {modelName: m, vllm: {}, udsTokenizerConfig: {socketFile: /s}}}\n",
         "plugins[0].parameters"),
        ("- {type: precise-prefix-cache-producer, parameters: {sessionManager: s}}\n", "plugins[0].parameters.sessionManager"),
        ("- {type: precise-prefix-cache-producer, parameters: {kvEventsConfig: {zmqEndpont: x}}}\n",
         "plugins[0].parameters.kvEventsConfig.zmqEndpont"),
        ("- {type: precise-prefix-cache-scorer, parameters: {indexerConfig: {tokenizersPoolConfig: {workersCount: many}}}}\n",
         "plugins[0].parameters.indexerConfig.tokenizersPoolConfig.workersCount"),
    ],
)  # fmt: skip
def test_bad_llm_d_forms_name_the_field(plugins: str, path: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_scheduler_text(HEADER + plugins)
    assert err.value.path == path
