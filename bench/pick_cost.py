"""epp's own CPU per request, without the transport: the serve path in-process, side by side for source trees.

Each tree (``--trees NAME=PATH``) runs in its own child process: one ``PickerService`` built from ``epp
serve`` flags (default config unless ``--picker-arg``) over echo engines, serving as ``epp serve`` does
(scrapes, background tasks), while the child feeds ext_proc messages for one chat request after another
straight to the servicer's stream handler — pre-serialized as grpc.aio hands them over, parsed, handled,
every reply serialized: request headers, the body in 16 KB chunks (as Envoy sends it), response headers
and a JSON body with usage, then the stream's end. What ``bench/overhead.py`` adds on top is the
gRPC/HTTP2 transport, Envoy and the load generator; this isolates epp's code, and it holds up on a busy
machine (the child's thread CPU time, the best and the median of ``--batches`` batches), where
requests per picker CPU-second through Envoy swing by 30 %.

Prompts (``--prompts``): ``same`` repeats one body (what ``bench/overhead.py`` sends: every segment of
the prompt is in the producers' memo after the first request), ``unique`` starts every request's prompt
with its own number, so each is hashed in full (what novel prompts cost).

    git archive main | tar -x -C /tmp/before
    python bench/pick_cost.py --trees before=/tmp/before epp=. --sizes 1024 225280 --prompts same unique
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import orjson

CHUNK = 16384  # Envoy's request body chunk in FULL_DUPLEX_STREAMED mode
USAGE = b'{"id":"x","choices":[{"text":"hi"}],"usage":{"prompt_tokens":10,"completion_tokens":4,"total_tokens":14}}'


def chat_body(size: int, tag: str) -> bytes:
    """An OpenAI chat request of about ``size`` bytes whose prompt starts with ``tag``."""
    base = {"model": "demo-model", "max_tokens": 4, "messages": [{"role": "user", "content": tag}]}
    pad = max(0, size - len(orjson.dumps(base)))
    base["messages"][0]["content"] = tag + "lorem ipsum " * (pad // 12) + "x" * (pad % 12)  # type: ignore[index]
    return orjson.dumps(base)


async def _worker(size: int, requests: int, batches: int, prompts: str, picker_args: list[str]) -> list[float]:
    """CPU ms per request of each batch (runs inside the tree's own interpreter path)."""
    from envoy.config.core.v3 import base_pb2
    from envoy.extensions.filters.http.ext_proc.v3.processing_mode_pb2 import (
        ProcessingMode,
    )
    from envoy.service.ext_proc.v3 import external_processor_pb2 as pb

    from epp.cli import build_parser
    from epp.demo.engines import start_echo_engines
    from epp.extproc.servicer import ExtProcServicer
    from epp.service import PickerService

    def headers(rid: str) -> bytes:
        values = {":path": "/v1/chat/completions", ":method": "POST", ":authority": "gw", "x-request-id": rid,
                  "content-type": "application/json"}
        hmap = base_pb2.HeaderMap(headers=[base_pb2.HeaderValue(key=k, raw_value=v.encode()) for k, v in values.items()])
        msg = pb.ProcessingRequest(request_headers=pb.HttpHeaders(headers=hmap))
        msg.protocol_config.request_body_mode = ProcessingMode.FULL_DUPLEX_STREAMED
        msg.protocol_config.response_body_mode = ProcessingMode.FULL_DUPLEX_STREAMED
        serialized: bytes = msg.SerializeToString()
        return serialized

    def body(data: bytes) -> list[bytes]:
        parts = [data[i:i + CHUNK] for i in range(0, len(data), CHUNK)]
        return [pb.ProcessingRequest(request_body=pb.HttpBody(body=p, end_of_stream=i == len(parts) - 1)).SerializeToString()
                for i, p in enumerate(parts)]

    status = base_pb2.HeaderMap(headers=[base_pb2.HeaderValue(key=":status", raw_value=b"200"),
                                         base_pb2.HeaderValue(key="content-type", raw_value=b"application/json")])
    response = [pb.ProcessingRequest(response_headers=pb.HttpHeaders(headers=status)).SerializeToString(),
                pb.ProcessingRequest(response_body=pb.HttpBody(body=USAGE, end_of_stream=True)).SerializeToString()]
    total = requests * (batches + 1)
    same = body(chat_body(size, ""))
    streams = [[headers(f"r{i}"), *(same if prompts == "same" else body(chat_body(size, f"{i} "))), *response]
               for i in range(total)]
    fleet = start_echo_engines(["e0", "e1", "e2"])
    try:
        args = build_parser().parse_args([
            "serve", "--secure-serving=false", "--bind-address", "127.0.0.1", "--grpc-port", "0",
            "--grpc-health-port", "0", "--metrics-port", "0", "--drain-timeout", "0s",
            "--static-endpoints", ",".join(u.hostport for u in fleet.upstreams), *picker_args,
        ])
        try:  # trees since the frozen serve config build from it; older ones from the Namespace
            from epp.serve_config import ServeConfig
            service = PickerService(ServeConfig.from_args(args))
        except ImportError:
            service = PickerService(args)
        async with service:
            await asyncio.sleep(1.0)  # first scrapes
            servicer = ExtProcServicer(service.director, args.max_body_bytes, service.limiter)
            parse = pb.ProcessingRequest.FromString

            def one(messages: list[bytes]) -> None:
                stream = servicer.new_stream()
                for raw in messages:
                    replies = stream.handle(parse(raw))
                    assert isinstance(replies, list), "admission held a request: use a config without flow control"
                    for reply in replies:
                        reply.SerializeToString()
                stream.close()

            for messages in streams[:requests]:  # warm-up batch
                one(messages)
            per_batch: list[float] = []
            for b in range(1, batches + 1):
                start = time.thread_time()
                for messages in streams[b * requests:(b + 1) * requests]:
                    one(messages)
                per_batch.append((time.thread_time() - start) / requests * 1000)
                await asyncio.sleep(0.05)  # let scrapes and background tasks run between batches
            return per_batch
    finally:
        fleet.stop()


def run_tree(tree: Path, size: int, args: argparse.Namespace, prompts: str) -> list[float]:
    """One child process on ``tree``: its batches' CPU ms per request."""
    env = os.environ | {"PYTHONPATH": str(tree)}
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", "--sizes", str(size), "--requests",
           str(args.requests), "--batches", str(args.batches), "--prompts", prompts,
           *(f"--picker-arg={a}" for a in args.picker_arg)]
    out = subprocess.run(cmd, env=env, cwd=tree, capture_output=True, timeout=600, check=False)
    if out.returncode != 0:
        raise SystemExit(f"{tree}: worker failed:\n{out.stderr.decode()[-3000:]}")
    result: list[float] = orjson.loads(out.stdout.splitlines()[-1])
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trees", nargs="+", default=["epp=."], help="NAME=PATH of epp source trees, side by side")
    parser.add_argument("--sizes", type=int, nargs="+", default=[1024, 220 * 1024], help="request body bytes")
    parser.add_argument("--prompts", nargs="+", choices=["same", "unique"], default=["same"])
    parser.add_argument("--requests", type=int, default=200, help="requests per batch")
    parser.add_argument("--batches", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=2, help="child processes per tree and cell, interleaved")
    parser.add_argument("--picker-arg", action="append", default=[], help="extra epp serve flag (repeat)")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(orjson.dumps(asyncio.run(_worker(args.sizes[0], args.requests, args.batches, args.prompts[0],
                                                 args.picker_arg))).decode())
        return 0
    trees: list[tuple[str, Path]] = []
    for spec in args.trees:
        name, sep, path = spec.partition("=")
        if not sep or not (Path(path) / "epp" / "__init__.py").is_file():
            raise SystemExit(f"--trees {spec!r}: expected NAME=PATH to an epp source tree")
        trees.append((name, Path(path).resolve()))
    lines = ["| prompts | body | " + " | ".join(f"{n} ms CPU/req (best / median)" for n, _ in trees)
             + "".join(f" | {n} ÷ {trees[0][0]}" for n, _ in trees[1:]) + " |"]
    lines.append("|---|---|" + "---|" * (len(trees) + len(trees) - 1))
    for prompts in args.prompts:
        for size in args.sizes:
            batches: dict[str, list[float]] = {name: [] for name, _ in trees}
            for _ in range(args.rounds):
                for name, tree in trees:  # interleaved, so load drifts hit every tree alike
                    batches[name] += run_tree(tree, size, args, prompts)
            best = {n: min(b) for n, b in batches.items()}
            median = {n: statistics.median(b) for n, b in batches.items()}
            first = trees[0][0]
            cells = " | ".join(f"{best[n]:.3f} / {median[n]:.3f}" for n, _ in trees)
            ratios = "".join(f" | {median[n] / median[first]:.2f}" for n, _ in trees[1:])
            lines.append(f"| {prompts} | {size // 1024} KB | {cells}{ratios} |")
            print(f"  done {prompts} {size} B", file=sys.stderr)
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
