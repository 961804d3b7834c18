"""Queueing, engine flavours and fault flags, each on its own ``epp sim`` process."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import wait_for
from tests.sim.conftest import run_sim
from tests.sim.helpers import MODEL, post, scrape


async def _scrape_until(
    session: aiohttp.ClientSession, base: str, done: Callable[[dict[str, float]], bool], what: str
) -> dict[str, float]:
    """Scrape until ``done(metrics)`` holds (bounded by ``wait_for``); return that scrape."""
    latest: dict[str, float] = {}

    async def check() -> bool:
        latest.update(await scrape(session, base))
        return done(latest)

    await wait_for(check, what=what)
    return latest


async def test_requests_beyond_max_num_seqs_wait_and_usage_falls_after() -> None:
    # 1 wall second = 1 engine second; 300 tokens of 8B decode take ~2.4 s, long enough to observe.
    with run_sim("--max-num-seqs", "2", "--time-scale", "1") as sim:
        async with aiohttp.ClientSession() as s:
            body = {"model": MODEL, "prompt": "x" * 400, "max_tokens": 300}
            tasks = [asyncio.create_task(post(s, f"{sim.url}/v1/completions", {**body, "prompt": f"{i}" * 400}))
                     for i in range(5)]  # fmt: skip
            busy = await _scrape_until(s, sim.url, lambda m: m["vllm:num_requests_waiting"] >= 3, "3 waiting")
            assert busy["vllm:num_requests_running"] == 2 and busy["vllm:kv_cache_usage_perc"] > 0
            for task in tasks:
                task.cancel()  # clients disconnect: the engine aborts their requests
            await asyncio.gather(*tasks, return_exceptions=True)
            idle = await _scrape_until(
                s, sim.url, lambda m: m["vllm:num_requests_running"] + m["vllm:num_requests_waiting"] == 0, "idle")
            assert idle["vllm:kv_cache_usage_perc"] == 0.0
            assert idle["vllm:num_requests_running"] == 0 and idle["vllm:num_requests_waiting"] == 0


async def test_sglang_flavour_uses_sglang_names() -> None:
    with run_sim("--engine", "sglang", "--time-scale", "0", "--kv-cache-blocks", "100") as sim:
        async with aiohttp.ClientSession() as s:
            await post(s, f"{sim.url}/v1/completions", {"model": MODEL, "prompt": "y" * 200, "max_tokens": 2})
            await post(s, f"{sim.url}/v1/completions", {"model": MODEL, "prompt": "y" * 200, "max_tokens": 2})
            metrics = await scrape(s, sim.url)
            async with s.get(f"{sim.url}/v1/models") as resp:
                owned = (await resp.json())["data"][0]["owned_by"]
            async with s.get(f"{sim.url}/metrics") as resp:
                text = await resp.text()
    assert owned == "sglang"
    assert {"sglang:num_running_reqs", "sglang:num_queue_reqs", "sglang:token_usage"} <= metrics.keys()
    assert metrics["sglang:cache_hit_rate"] > 0.4 and metrics["sglang:generation_tokens_total"] == 4
    assert 'sglang:cache_config_info{num_pages="100",page_size="16"} 1.0' in text
    assert not any(name.startswith("vllm:") for name in metrics)


async def test_error_rate_one_always_fails_with_openai_500() -> None:
    with run_sim("--fault-error-rate", "1", "--time-scale", "0") as sim:
        async with aiohttp.ClientSession() as s:
            status, err = await post(s, f"{sim.url}/v1/completions", {"model": MODEL, "prompt": "x"})
            async with s.get(f"{sim.url}/health") as resp:
                assert resp.status == 200  # only inference requests fail
    assert status == 500 and err["error"]["type"] == "InternalServerError"


async def test_error_rate_is_seeded() -> None:
    async def outcomes() -> list[int]:
        with run_sim("--fault-error-rate", "0.5", "--time-scale", "0", "--seed", "3") as sim:
            async with aiohttp.ClientSession() as s:
                body = {"model": MODEL, "prompt": "x", "max_tokens": 1}
                return [(await post(s, f"{sim.url}/v1/completions", body))[0] for _ in range(12)]

    first = await outcomes()
    assert first == await outcomes() and {200, 500} == set(first)


async def test_extra_latency_delays_arrival_at_the_engine() -> None:
    with run_sim("--fault-extra-latency", "3", "--time-scale", "0") as sim:
        async with aiohttp.ClientSession() as s:
            task = asyncio.create_task(post(s, f"{sim.url}/v1/completions", {"model": MODEL, "prompt": "x" * 64}))
            await asyncio.sleep(0.3)
            during = await scrape(s, sim.url)
            assert not task.done()
            status, _ = await task
            after = await scrape(s, sim.url)
    assert status == 200
    assert during["vllm:prefix_cache_queries_total"] == 0 and after["vllm:prefix_cache_queries_total"] == 16


@pytest.mark.parametrize("mode", ["garbage", "hang"])
async def test_broken_metrics(mode: str) -> None:
    with run_sim("--fault-metrics", mode, "--time-scale", "0") as sim:
        async with aiohttp.ClientSession() as s:
            if mode == "hang":
                with pytest.raises(TimeoutError):
                    async with s.get(f"{sim.url}/metrics", timeout=aiohttp.ClientTimeout(total=0.5)):
                        pass
            else:
                async with s.get(f"{sim.url}/metrics") as resp:
                    text = await resp.text()
                with pytest.raises(ValueError):
                    list(text_string_to_metric_families(text))
            status, _ = await post(s, f"{sim.url}/v1/completions", {"model": MODEL, "prompt": "x", "max_tokens": 1})
    assert status == 200


async def test_crash_after_n_requests() -> None:
    with run_sim("--fault-crash-after", "2", "--time-scale", "0") as sim:
        async with aiohttp.ClientSession() as s:
            body = {"model": MODEL, "prompt": "x", "max_tokens": 1}
            assert (await post(s, f"{sim.url}/v1/completions", body))[0] == 200
            assert (await post(s, f"{sim.url}/v1/completions", body))[0] == 200
        assert await asyncio.to_thread(sim.proc.wait, 10) == 1
        async with aiohttp.ClientSession() as s:
            with pytest.raises(aiohttp.ClientConnectionError):
                await post(s, f"{sim.url}/v1/completions", body)


def test_bad_flags_exit_with_a_message() -> None:
    import subprocess
    import sys

    out = subprocess.run(
        [sys.executable, "-m", "epp", "sim", "--fault-error-rate", "2"], capture_output=True, text=True, timeout=30
    )
    assert out.returncode == 2 and "error rate" in out.stderr


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--kv-events-topic", "kv@{pod}@{model}"], "may use only {host}, {port} and {model}"),
        (["--kv-events-replay-endpoint", "tcp://*:5558"], "needs --kv-events-endpoint"),
    ],
)
def test_bad_kv_event_flags_exit_with_a_message(flags: list[str], message: str) -> None:
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-m", "epp", "sim", *flags], capture_output=True, text=True, timeout=30)
    assert out.returncode == 2 and message in out.stderr
