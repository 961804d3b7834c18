"""``epp bbr``: the body-based router's flags and composition root.

Builds the model catalog (``--models`` + ``--models-file``) → ``BodyRouter`` → ext_proc + health servers
(the picker's ``PickerServer``, plaintext by default as docs/deploy.md specifies), watches the models file,
waits for SIGTERM/SIGINT and stops in reverse (the shared ``epp._util.cli`` loop and drain: health
NOT_SERVING first, new streams served for ``--drain-timeout``, open ones then get ``--shutdown-grace``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
from collections.abc import Iterable
from typing import TYPE_CHECKING

from epp._util.cli import Shutdown, add_serving_flags, bool_flag, duration, run_async, run_until_signal
from epp._util.lifecycle import cancel_and_wait
from epp._util.logs import configure_logging, log_settings
from epp.request.body import DEFAULT_MAX_BODY_BYTES

if TYPE_CHECKING:
    from epp.bbr.catalog import ModelEntry

log = logging.getLogger("epp.bbr")

DESCRIPTION = """\
Run the body-based router: an Envoy ext_proc gRPC server placed before route matching. It reads the
OpenAI request body and sets, for HTTPRoutes (and policies) to match on:
  X-Gateway-Model-Name       the body's "model"
  X-Gateway-Base-Model-Name  the base model of a catalogued model (LoRA adapter -> base; base -> itself)
  X-Gateway-Engine           the body's "owned_by" (e.g. vllm, sglang), else the model's only catalogued engine
then clears the route cache. Client-sent copies of these headers are removed.

Unknown models: with --models and/or --models-file the router knows the served models and answers any
other model itself with OpenAI's 404 model_not_found; without them every model passes (as GIE's router).
Broken bodies get a 400 OpenAI error. The gateway must send the request body BUFFERED (or
FULL_DUPLEX_STREAMED); the response phase is not needed.
"""

EPILOG = """\
models file (YAML; several documents allowed; re-read when it changes, e.g. a mounted ConfigMap):
  models:
  - baseModel: meta-llama/Llama-3.1-8B-Instruct
    adapters: [sql-lora, ski-resorts]
    engine: vllm
  - baseModel: Qwen/Qwen3-32B
    engine: sglang
A GIE router ConfigMap's data (baseModel + adapters), a whole ConfigMap or a List of them also work.

example:
  epp bbr --grpc-port=9004 --grpc-health-port=9005 --models-file=/etc/epp/models.yaml
"""


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.description = DESCRIPTION
    parser.epilog = EPILOG
    add_serving_flags(
        parser, grpc_port=9004, health_port=9005, secure=False, drain="10s", max_body_bytes=DEFAULT_MAX_BODY_BYTES,
        health_help="gRPC health port (plaintext; every service name, including \"\", is SERVING while up)",
        secure_help="serve ext_proc over TLS (default plaintext h2c: the router runs in-cluster next to the gateway)",
    )
    m = parser.add_argument_group("models")
    m.add_argument("--models", default="", metavar="NAME[,ADAPTER=BASE...]",
                   help="served models: base model names, or LoRA adapters as ADAPTER=BASE")
    m.add_argument("--models-file", default="", metavar="PATH", help="YAML models file (format below)")
    m.add_argument("--models-reload-interval", type=duration, default="5s", metavar="DURATION",
                   help="how often to check --models-file for changes")
    bool_flag(m, "--reject-unknown-models", True,
              "with a model list: answer unknown models with 404 (false: let them through, only "
              "adding the base-model/engine headers for listed ones)")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    configure_logging(log_settings(args))
    if args.max_body_bytes < 1:
        log.error("--max-body-bytes must be positive")
        return 2
    return run_async(serve(args))


async def serve(args: argparse.Namespace) -> int:
    from epp.bbr.catalog import CatalogError, ModelCatalog, parse_models_flag
    from epp.bbr.models_file import ModelsFile, ModelsFileWatcher
    from epp.bbr.router import BodyRouter
    from epp.bbr.stream import RouterStream
    from epp.extproc.health import HealthService
    from epp.extproc.server import PickerServer
    from epp.extproc.servicer import StreamServicer
    from epp.extproc.tls import server_credentials

    restricts = bool(args.models.strip() or args.models_file) and args.reject_unknown_models
    models_file = ModelsFile(args.models_file) if args.models_file else None
    try:
        flagged = parse_models_flag(args.models)

        def catalog(from_file: Iterable[ModelEntry]) -> ModelCatalog:
            return ModelCatalog([*flagged, *from_file], restricts=restricts)

        router = BodyRouter(catalog(models_file.load() if models_file else []))
        credentials = server_credentials(args.cert_path or None, args.enable_cert_reload) if args.secure_serving else None
    except (CatalogError, OSError) as exc:
        log.error("%s", exc)
        return 2
    log.info("models: %s", router.catalog.describe())
    if restricts and not len(router.catalog):
        log.warning("the model list is empty: every request naming a model will get 404")

    def apply(entries: Iterable[ModelEntry]) -> None:
        router.update(catalog(entries))
        log.info("models file reloaded: %s", router.catalog.describe())

    server = PickerServer(
        StreamServicer(lambda: RouterStream(router, args.max_body_bytes)), HealthService(readiness=lambda: True),
        port=args.grpc_port, health_port=args.grpc_health_port, host=args.bind_address or "[::]",
        credentials=credentials, max_message_bytes=args.max_body_bytes,
    )

    async def setup(stack: contextlib.AsyncExitStack, shutdown: Shutdown) -> None:
        await server.start()
        stack.push_async_callback(server.stop, args.shutdown_grace, args.drain_timeout, shutdown.hurry, shutdown.now)
        if models_file is not None:
            watcher = ModelsFileWatcher(models_file, apply)
            stack.push_async_callback(cancel_and_wait, asyncio.create_task(watcher.run(args.models_reload_interval)))
        log.info("epp bbr ready: ext_proc :%d (%s), health :%d", server.port,
                 "TLS" if credentials else "plaintext", server.health_port)

    return await run_until_signal(setup, log)

