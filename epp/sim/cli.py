"""``epp sim``: flags → ``SimOptions`` → a running ``SimServer``."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import sys
import time
from typing import TYPE_CHECKING

from epp._util.cli import non_negative_float, port
from epp.engine.config import DEFAULT_PROFILE, PROFILES, EngineConfig
from epp.sim.faults import METRICS_FAULTS, FaultConfig
from epp.kvevents.encode import WireFormat
from epp.sim.sidecar import ROLES

if TYPE_CHECKING:
    from epp.sim.server import SimOptions

log = logging.getLogger("epp.sim")


def configure_parser(parser: argparse.ArgumentParser) -> None:
    net = parser.add_argument_group("serving")
    net.add_argument("--host", default="127.0.0.1", help="address to listen on")
    net.add_argument("--port", type=port, default=8000, help="port to listen on (0 = any free port; the log says which)")
    net.add_argument("--model", default="meta-llama/Llama-3.1-8B-Instruct", help="base model name (seeds block hashes)")
    net.add_argument("--served-model-name", action="append", default=None, metavar="NAME",
                     help="name clients use for the base model (repeatable; default: --model)")  # fmt: skip
    net.add_argument("--engine", choices=("vllm", "sglang"), default="vllm",
                     help="engine to imitate: metric names, KV-event fields, owned_by")  # fmt: skip
    net.add_argument("--role", choices=ROLES, default="both",
                     help="disaggregation role: decode and both engines send a multimodal request's media to the "
                          "encode engines named by x-encoder-hosts-ports (else encode it themselves), run the "
                          "prefill named by x-prefiller-host-port there, then decode with its KV; an encode "
                          "engine only encodes")  # fmt: skip
    net.add_argument("--enable-prompt-tokens-details", action="store_true",
                     help="report usage.prompt_tokens_details.cached_tokens (vLLM's flag; null without it)")  # fmt: skip
    net.add_argument("--legacy-formats", action="store_true",
                     help="imitate vLLM before 0.32: deprecated metric names (gpu_cache_usage_perc, gpu_prefix_cache_*,"
                          " time_per_output_token_seconds) and usage.prompt_tokens_details always set")  # fmt: skip
    net.add_argument("--default-max-tokens", type=int, default=16, help="tokens generated when a request sets no max")
    eng = parser.add_argument_group("engine")
    eng.add_argument("--profile", choices=sorted(PROFILES), default=DEFAULT_PROFILE, help="GPU/model latency profile")
    eng.add_argument("--block-size", type=int, default=16, help="tokens per KV block")
    eng.add_argument("--kv-cache-blocks", type=int, default=None,
                     help="KV blocks (default: what the profile's GPU memory holds at 90%% utilisation)")  # fmt: skip
    eng.add_argument("--max-num-seqs", type=int, default=256, help="most requests in one batch")
    eng.add_argument("--max-num-batched-tokens", type=int, default=8192, help="token budget of one step")
    eng.add_argument("--max-model-len", type=int, default=131072, help="longest prompt + output")
    eng.add_argument("--no-prefix-caching", action="store_true", help="disable automatic prefix caching")
    eng.add_argument("--lora", action="append", default=[], metavar="NAME", help="a LoRA adapter to serve (repeatable)")
    eng.add_argument("--max-loras", type=int, default=1, help="LoRA adapters resident on the GPU at once")
    eng.add_argument("--lora-load-seconds", type=float, default=0.02, help="cost of loading an adapter into a slot")
    eng.add_argument("--step-floor-ms", type=float, default=2.0, help="fixed cost of every engine step")
    eng.add_argument("--time-scale", type=non_negative_float, default=1.0,
                     help="wall seconds per simulated second (0.1 = 10x faster; 0 = as fast as possible)")  # fmt: skip
    eng.add_argument("--seed", type=int, default=0, help="seeds ids, latency jitter and faults")
    eng.add_argument("--latency-jitter", type=float, default=0.0, help="random +/- fraction on each step's duration")
    kv = parser.add_argument_group("KV-cache events")
    kv.add_argument(
        "--kv-events-endpoint",
        default=None,
        metavar="ZMQ",
        help="publish KV events on ZMQ PUB (tcp://*:5557 binds, tcp://host:port connects)",
    )
    kv.add_argument("--kv-events-topic", default="",
                    help="ZMQ topic; {host}, {port} and {model} are filled in (llm-d's convention:"
                         " 'kv@{host}:{port}@{model}'). Default: empty, as vLLM")  # fmt: skip
    kv.add_argument("--kv-events-encoding", choices=("map", "array"), default="map",
                    help="map: today's vLLM/SGLang (type-tagged maps, [ts, events, rank]); array: older engines'"
                         " tagged arrays, [ts, events]")  # fmt: skip
    kv.add_argument("--kv-events-replay-endpoint", default=None, metavar="ZMQ",
                    help="serve vLLM's replay ROUTER here (e.g. tcp://*:5558): the last 10,000 batches on request")  # fmt: skip
    faults = parser.add_argument_group("fault injection")
    faults.add_argument("--fault-extra-latency", type=float, default=0.0, metavar="SECONDS",
                        help="wall seconds added before every inference request")  # fmt: skip
    faults.add_argument("--fault-error-rate", type=float, default=0.0, metavar="P",
                        help="probability of answering an inference request with a 500")  # fmt: skip
    faults.add_argument("--fault-metrics", choices=METRICS_FAULTS, default=None, help="break /metrics")
    faults.add_argument("--fault-crash-after", type=int, default=None, metavar="N",
                        help="exit abruptly (status 1) after N finished requests")  # fmt: skip
    parser.set_defaults(run=run)


def _check_kv_events(args: argparse.Namespace) -> None:
    """Raise ``ValueError`` for KV-event flags that cannot work, before anything starts."""
    if args.kv_events_replay_endpoint and not args.kv_events_endpoint:
        raise ValueError("--kv-events-replay-endpoint needs --kv-events-endpoint")
    try:
        args.kv_events_topic.format(host="h", port=1, model="m")
    except (KeyError, IndexError, ValueError) as exc:
        raise ValueError(f"--kv-events-topic may use only {{host}}, {{port}} and {{model}}: {exc!r}") from None


def options_from_args(args: argparse.Namespace) -> SimOptions:
    from epp.sim.server import SimOptions

    _check_kv_events(args)

    engine = EngineConfig(
        profile=args.profile,
        model=args.model,
        block_size=args.block_size,
        num_gpu_blocks=args.kv_cache_blocks,
        max_num_seqs=args.max_num_seqs,
        max_num_batched_tokens=args.max_num_batched_tokens,
        max_model_len=args.max_model_len,
        enable_prefix_caching=not args.no_prefix_caching,
        enable_kv_events=args.kv_events_endpoint is not None,
        max_loras=args.max_loras,
        lora_adapters=tuple(args.lora),
        lora_load_seconds=args.lora_load_seconds,
        step_floor_seconds=args.step_floor_ms / 1000,
        latency_jitter=args.latency_jitter,
        seed=args.seed,
    )
    return SimOptions(
        engine_config=engine,
        served_model_names=tuple(args.served_model_name or ()),
        engine=args.engine,
        time_scale=args.time_scale,
        default_max_tokens=args.default_max_tokens,
        faults=FaultConfig(args.fault_extra_latency, args.fault_error_rate, args.fault_metrics, args.fault_crash_after),
        kv_events_endpoint=args.kv_events_endpoint,
        kv_events_wire=_wire(args.engine, args.kv_events_encoding),
        kv_events_replay_endpoint=args.kv_events_replay_endpoint,
        prompt_tokens_details=args.enable_prompt_tokens_details or args.legacy_formats,
        legacy_metrics=args.legacy_formats,
        kv_events_topic=args.kv_events_topic,
        role=args.role,
    )


def _wire(engine: str, encoding: str) -> WireFormat:
    if encoding == "array":
        return WireFormat.ARRAY
    return WireFormat.SGLANG if engine == "sglang" else WireFormat.VLLM


def _crash() -> None:
    sys.stderr.flush()
    os._exit(1)


async def _serve(args: argparse.Namespace) -> None:
    from epp._util.clock import WallClock
    from epp.sim.server import SimServer

    options = options_from_args(args)
    server = SimServer(options, clock=WallClock(), wall_time=time.time, crash=_crash)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await server.start(args.host, args.port)
    except OSError as exc:  # port in use, address not on this host, no permission
        raise SystemExit(f"epp sim: cannot listen on {args.host}:{args.port}: {exc.strerror or exc}") from None
    try:
        log.info(
            "epp sim listening on http://%s:%d (engine %s, role %s, models %s, profile %s, %d KV blocks of %d tokens)",
            args.host,
            server.port,
            options.engine,
            options.role,
            ",".join(options.model_names),
            args.profile,
            server.core.num_gpu_blocks,
            args.block_size,
        )
        await stop.wait()
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
        await server.stop()


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    try:
        options_from_args(args)
    except ValueError as exc:
        print(f"epp sim: {exc}", file=sys.stderr)
        return 2
    with contextlib.suppress(KeyboardInterrupt):
        try:
            import uvloop
        except ImportError:  # pragma: no cover - uvloop is a dependency except on Windows
            asyncio.run(_serve(args))
        else:
            uvloop.run(_serve(args))
    return 0
