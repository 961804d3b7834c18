"""A new 32K-token prompt's first response does not stall ``epp serve``'s other streams.

The precise producer encodes the rest of a lazily read prompt at its first response (50-80 ms of Rust
encoding for 32K tokens). ``PickerService`` (what ``epp serve`` runs) is driven over real gRPC on
127.0.0.1; while the big prompt's first token arrives, another stream sends response chunks and
times the gaps between epp's replies, and a probe task on the event loop measures how late its 1 ms
sleeps wake. With
the encode on the data layer's worker thread both stay within ``STALL_MS``; the control runs the same
exchange with the encode inline (as replay does) and must see the stall, so the measurement can fail.
"""

from __future__ import annotations

import asyncio
import gc
import random
import statistics
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import orjson
import pytest
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as pb_grpc

from epp._util.offload import INLINE
from epp.scheduling.prefix.precise_producer import PrecisePrefixCacheProducer
from epp.service import PickerService, tune_gc
from tests.conftest import wait_for
from tests.extproc.builders import request_body, request_headers, response_body, response_headers
from tests.test_service import serve_args

TINY = Path(__file__).parents[1] / "data" / "vllm-0.32-cpu" / "tiny-llama"
STALL_MS = 10.0
TRIALS = 5  # a trial passes if neither measure saw a stall; one must pass (other tenants of a busy box preempt the loop)
WORDS = ["alpha", " beta", " gamma,", " delta.", "\n", " epsilon", " 42", " zeta's", "  eta", " théta"]


def big_prompt(seed: int) -> bytes:
    """A completion body of about 32K tokens of the tiny model's tokenizer, new to epp."""
    rng = random.Random(seed)
    prompt = "".join(rng.choice(WORDS) for _ in range(19_000))
    return orjson.dumps({"model": "m", "prompt": prompt})


@dataclass
class Lag:
    """Worst delays seen while ``window`` is open: the probe's late wake-ups, and the other stream's gaps
    between replies beyond their median outside the window (a gap covers a stall whether it hit the
    chunk in flight or the pause between chunks)."""

    window: bool = False
    probe_ms: float = 0.0
    reply_ms: list[float] = field(default_factory=list)
    quiet_ms: list[float] = field(default_factory=list)

    @property
    def stream_ms(self) -> float:
        return max(self.reply_ms, default=0.0) - statistics.median(self.quiet_ms)


async def probe(lag: Lag, stop: asyncio.Event) -> None:
    while not stop.is_set():
        start = time.perf_counter()
        await asyncio.sleep(0.001)
        late = (time.perf_counter() - start) * 1000 - 1.0
        if lag.window:
            lag.probe_ms = max(lag.probe_ms, late)


async def other_stream(port: int, lag: Lag, stop: asyncio.Event, started: asyncio.Event) -> None:
    """A small chat whose response is streamed back through epp chunk by chunk, the gaps between replies timed."""
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        call = pb_grpc.ExternalProcessorStub(channel).Process(timeout=60)
        body = orjson.dumps({"model": "m", "messages": [{"role": "user", "content": "hello there"}]})
        await call.write(request_headers(extra={"x-request-id": "other"}))
        await call.write(request_body(body, eos=True))
        await call.read()
        await call.read()
        await call.write(response_headers("text/event-stream"))
        await call.read()
        started.set()
        chunk = b'data: {"choices":[{"text":"x"}]}\n\n'
        last = time.perf_counter()
        while not stop.is_set():
            await call.write(response_body(chunk))
            await call.read()
            now = time.perf_counter()
            (lag.reply_ms if lag.window else lag.quiet_ms).append((now - last) * 1000)
            last = now
            await asyncio.sleep(0.001)
        await call.write(response_body(b"data: [DONE]\n\n", eos=True))
        await call.read()
        await call.done_writing()


def service_with_precise_producer(tmp_path: Path) -> PickerService:
    """``epp serve`` with the precise producer reading prompts with the tiny model's tokenizer."""
    config = tmp_path / "precise.yaml"
    config.write_text(
        "apiVersion: llm-d.ai/v1alpha1\nkind: EndpointPickerConfig\nplugins:\n"
        f"- {{type: precise-prefix-cache-producer, name: kv, parameters: {{tokenizer: '{TINY}', maxPrefixTokensToMatch: 131072}}}}\n"
        "- {type: prefix-cache-scorer, parameters: {prefixMatchInfoProducerName: kv}}\n- {type: max-score-picker}\n"
        "schedulingProfiles:\n- name: default\n  plugins:\n  - {pluginRef: prefix-cache-scorer}\n"
        "  - {pluginRef: max-score-picker}\n"
    )
    return PickerService(serve_args("--static-endpoints", "127.0.0.1:40001,127.0.0.1:40002", "--config-file", str(config)))


@pytest.fixture
async def picker(tmp_path: Path) -> AsyncIterator[tuple[PickerService, PrecisePrefixCacheProducer]]:
    async with service_with_precise_producer(tmp_path) as service:
        producer = next(p for p in service.scheduler.plugins if isinstance(p, PrecisePrefixCacheProducer))
        await wait_for(lambda: producer.tokenizers.for_model("m") is not None, what="the tokenizer loaded")
        threshold = gc.get_threshold()
        tune_gc()  # as ``epp serve`` does once it serves: the test process's objects out of the collector's sight
        try:
            yield service, producer
        finally:
            gc.unfreeze()
            gc.set_threshold(*threshold)


async def first_response_lag(service: PickerService, seed: int, done: Callable[[], bool]) -> Lag:
    """Route a new 32K prompt, then send its response headers while the other stream and the probe run;
    the window stays open until ``done()`` (the rest was learned) and 50 ms more."""
    lag, stop, started = Lag(), asyncio.Event(), asyncio.Event()
    port = service.server.port
    tasks = [asyncio.create_task(probe(lag, stop)), asyncio.create_task(other_stream(port, lag, stop, started))]
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            call = pb_grpc.ExternalProcessorStub(channel).Process(timeout=60)
            await call.write(request_headers("/v1/completions", extra={"x-request-id": f"big-{seed}"}))
            await call.write(request_body(big_prompt(seed), eos=True))
            await call.read()
            await call.read()  # picked: the pick read one window of the prompt
            await asyncio.wait_for(started.wait(), 30)
            await asyncio.sleep(0.2)  # replies outside the window: the other stream's usual latency
            await call.write(response_headers("text/event-stream"))
            await call.read()
            lag.window = True
            await call.write(response_body(b'data: {"choices":[{"text":"first"}]}\n\n'))  # its first token: the
            await call.read()  # rest of the prompt is encoded now
            await wait_for(done, what="the prompt's rest learned", interval=0.005)
            await asyncio.sleep(0.05)
            lag.window = False
            await call.write(response_body(b"data: [DONE]\n\n", eos=True))
            await call.read()
            await call.done_writing()
    finally:
        stop.set()
        await asyncio.gather(*tasks)
    assert lag.reply_ms and lag.quiet_ms
    return lag


async def test_a_new_32k_prompts_first_response_does_not_stall_other_streams(
    picker: tuple[PickerService, PrecisePrefixCacheProducer],
) -> None:
    service, producer = picker
    offload = service.data_layer.offload
    assert offload is not None
    index = producer.precise.fallback
    seen = []
    for seed in range(TRIALS):
        applied, entries = offload.counts["applied"], index.entries()
        lag = await first_response_lag(service, seed, lambda a=applied: offload.counts["applied"] > a)
        assert index.entries() > entries + 1000  # the whole prompt was learned (~2,000 blocks), as inline
        seen.append((round(lag.probe_ms, 1), round(lag.stream_ms, 1)))
        if lag.probe_ms <= STALL_MS and lag.stream_ms <= STALL_MS:
            break
    else:
        pytest.fail(f"every trial stalled the event loop or the other stream by more than {STALL_MS} ms: {seen}")
    assert offload.counts["skipped"] == offload.counts["failed"] == 0


async def test_control_the_same_rest_encoded_inline_stalls_them(
    picker: tuple[PickerService, PrecisePrefixCacheProducer],
) -> None:
    """What the measurement sees when the rest is encoded on the event loop (the path before the offload)."""
    service, producer = picker
    producer.offload_to(INLINE)
    index = producer.precise.fallback
    seen = []
    for seed in range(TRIALS):
        entries = index.entries()
        lag = await first_response_lag(service, 100 + seed, lambda e=entries: index.entries() > e + 1000)
        seen.append((round(lag.probe_ms, 1), round(lag.stream_ms, 1)))
    assert min(p for p, _ in seen) > STALL_MS and min(s for _, s in seen) > STALL_MS, seen


async def test_serve_stops_with_rest_encodes_in_flight(tmp_path: Path) -> None:
    """Three new 32K prompts get their first token and epp stops at once: the running encode finishes or
    is dropped, the queued ones are discarded, nothing raises, nothing is left booked."""
    service = service_with_precise_producer(tmp_path)
    async with service:
        producer = next(p for p in service.scheduler.plugins if isinstance(p, PrecisePrefixCacheProducer))
        await wait_for(lambda: producer.tokenizers.for_model("m") is not None, what="the tokenizer loaded")
        offload = service.data_layer.offload
        assert offload is not None
        async with grpc.aio.insecure_channel(f"127.0.0.1:{service.server.port}") as channel:
            calls = []
            for seed in range(3):
                call = pb_grpc.ExternalProcessorStub(channel).Process(timeout=60)
                await call.write(request_headers("/v1/completions", extra={"x-request-id": f"stop-{seed}"}))
                await call.write(request_body(big_prompt(200 + seed), eos=True))
                await call.read()
                await call.read()
                await call.write(response_headers("text/event-stream"))
                await call.read()
                calls.append(call)
            for call in calls:  # three first tokens in a row: three rests submitted before any is done
                await call.write(response_body(b'data: {"choices":[{"text":"first"}]}\n\n'))
            for call in calls:
                await call.read()
            assert offload.in_flight > 0
            for call in calls:
                call.cancel()
    counts = offload.counts
    assert counts["applied"] + counts["cancelled"] == 3 and counts["failed"] == 0 and offload.in_flight == 0
    assert not producer._rests and not producer.tails
