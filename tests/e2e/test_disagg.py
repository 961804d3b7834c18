"""Prefill/decode disaggregation through a real Envoy: ``epp serve`` with llm-d's sim P/D config over two
``epp sim`` engines labelled prefill and decode. The decode engine serves every request; a long uncached
prompt has its prefill run on the prefill engine first (its metrics show it), a short or cached one stays on
the decode engine, and a prefill header forged by the client never reaches the sidecar."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import aiohttp
import pytest

from epp.envoy.config import Upstream
from epp.envoy.picker import PickerProcess
from epp.envoy.process import EnvoyProcess
from epp.envoy.stack import local_config
from tests.e2e.harness import post
from tests.sim.conftest import SimProcess, run_sim
from tests.sim.helpers import MODEL, scrape

SIM_PD_CONFIG = Path(__file__).parents[1] / "config" / "upstream_pd" / "llm-d__llm-d-router__deploy__config__sim-pd-epp-config.yaml"


@pytest.fixture(scope="module")
def pd_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[EnvoyProcess, SimProcess, SimProcess]]:
    workdir = tmp_path_factory.mktemp("disagg")
    with run_sim("--time-scale", "0", "--role", "prefill", "--served-model-name", MODEL) as prefill, \
            run_sim("--time-scale", "0", "--role", "decode", "--served-model-name", MODEL) as decode:
        with disagg_stack(workdir, {"prefill-0": ("prefill", prefill), "decode-0": ("decode", decode)},
                          SIM_PD_CONFIG) as envoy:
            yield envoy, prefill, decode


@contextmanager
def disagg_stack(workdir: Path, sims: Mapping[str, tuple[str, SimProcess]], config: Path) -> Iterator[EnvoyProcess]:
    """``epp serve`` with ``config`` over ``sims`` (name → its ``llm-d.ai/role`` and engine), listed in an
    endpoints file, behind a real Envoy routing to every engine; both stopped on exit."""
    members = workdir / "endpoints.yaml"
    members.write_text("endpoints:\n" + "".join(
        f"  - {{name: {name}, address: \"127.0.0.1\", port: \"{sim.port}\", labels: {{llm-d.ai/role: {role}}}}}\n"
        for name, (role, sim) in sims.items()))
    picker = PickerProcess((), endpoints_file=members, extra_args=["--config-file", str(config)],
                           log_path=workdir / "epp.log")
    upstreams = [Upstream("127.0.0.1", sim.port) for _, sim in sims.values()]
    envoy = EnvoyProcess(local_config(picker.address, upstreams, workdir), workdir)
    picker.start()
    try:
        envoy.start()
        try:
            yield envoy
        finally:
            envoy.stop()
    finally:
        picker.stop()


async def counters(sim: SimProcess) -> dict[str, float]:
    async with aiohttp.ClientSession() as s:
        return await scrape(s, sim.url)


async def test_long_prompt_prefills_on_the_prefill_engine_and_decodes_on_the_decode_engine(
    pd_stack: tuple[EnvoyProcess, SimProcess, SimProcess],
) -> None:
    envoy, prefill, decode = pd_stack
    before_p, before_d = await counters(prefill), await counters(decode)
    prompt = "disaggregate this long prompt please " * 20  # ~190 estimated tokens, none cached
    reply = await post(envoy, {"model": MODEL, "prompt": prompt, "max_tokens": 4}, path="/v1/completions")
    assert reply.status == 200, reply.body
    assert reply.json()["usage"]["completion_tokens"] == 4
    after_p, after_d = await counters(prefill), await counters(decode)
    prefilled = after_p["vllm:prompt_tokens_total"] - before_p["vllm:prompt_tokens_total"]
    assert prefilled > 100 and after_p["vllm:generation_tokens_total"] - before_p["vllm:generation_tokens_total"] == 1
    assert after_d["vllm:generation_tokens_total"] - before_d["vllm:generation_tokens_total"] == 4
    assert after_d["vllm:prefix_cache_hits_total"] - before_d["vllm:prefix_cache_hits_total"] >= prefilled - 16

    # The same prompt again: the decode engine holds it, so the decider keeps it there (no second prefill).
    reply = await post(envoy, {"model": MODEL, "prompt": prompt, "max_tokens": 4}, path="/v1/completions")
    assert reply.status == 200
    assert (await counters(prefill))["vllm:prompt_tokens_total"] == after_p["vllm:prompt_tokens_total"]


async def test_short_prompt_stays_on_decode_and_a_forged_prefill_header_is_dropped(
    pd_stack: tuple[EnvoyProcess, SimProcess, SimProcess],
) -> None:
    envoy, prefill, _ = pd_stack
    before = (await counters(prefill))["vllm:prompt_tokens_total"]
    forged = {"x-prefiller-host-port": "127.0.0.1:9", "x-llm-d-prefiller-host-port": "127.0.0.1:9"}
    reply = await post(envoy, {"model": MODEL, "prompt": "hi there", "max_tokens": 2}, path="/v1/completions",
                       headers=forged)
    assert reply.status == 200, reply.body  # the decode engine never tried 127.0.0.1:9
    assert (await counters(prefill))["vllm:prompt_tokens_total"] == before


SIM_EPD_CONFIG = SIM_PD_CONFIG.with_name("llm-d__llm-d-router__deploy__config__sim-e-p-d-epp-config.yaml")


async def test_a_multimodal_request_is_encoded_on_the_encode_engine(tmp_path: Path) -> None:
    """llm-d's sim E/P/D config through Envoy: the multimodal decider sends the image to the encode-labelled
    engine (the decode engine's sidecar fans it out), a text-only request never reaches it."""
    with run_sim("--time-scale", "0", "--role", "encode", "--served-model-name", MODEL) as encode, \
            run_sim("--time-scale", "0", "--role", "prefill", "--served-model-name", MODEL) as prefill, \
            run_sim("--time-scale", "0", "--role", "decode", "--served-model-name", MODEL) as decode:
        sims = {"encode-0": ("encode", encode), "prefill-0": ("prefill", prefill), "decode-0": ("decode", decode)}
        with disagg_stack(tmp_path, sims, SIM_EPD_CONFIG) as envoy:
            text = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
            reply = await post(envoy, text)
            assert reply.status == 200, reply.body
            assert (await counters(encode))["vllm:e2e_request_latency_seconds_count"] == 0
            image = {"type": "image_url", "image_url": {"url": "http://img/cat.png"}}
            content = [{"type": "text", "text": "what is this?"}, image]
            reply = await post(envoy, {**text, "messages": [{"role": "user", "content": content}]})
            assert reply.status == 200, reply.body
            e, d = await counters(encode), await counters(decode)
            assert e["vllm:e2e_request_latency_seconds_count"] == 1 and e["vllm:prompt_tokens_total"] >= 576
            assert d["vllm:e2e_request_latency_seconds_count"] == 2 and d["vllm:generation_tokens_total"] == 4
