"""``epp serve`` with ``bench/minimal_extproc.py``'s handler in place of epp's: the transport experiment.

Everything of a serving epp stays (grpc.aio server and its options, ``StreamServicer.Process``, the stream
limiter, the health server, metrics poller, data layer, GC tuning, logging, uvloop) except the per-message
handler: each stream gets ``Minimal.replies`` (one fixed destination, no parsing, no pick, no accounting).
Side by side with ``minimal`` in ``bench/overhead.py --pickers epp epp-null minimal``, it separates what
epp's *way of driving grpc.aio* costs (epp-null − minimal) from what epp's handler costs (epp − epp-null).

    python bench/epp_null_handler.py serve --static-endpoints 127.0.0.1:8000 ...   # any epp serve flags

The destination is the first ``--static-endpoints`` entry.
"""

from __future__ import annotations

import sys

from envoy.service.ext_proc.v3 import external_processor_pb2 as pb

import epp.extproc.servicer as servicer_module
from epp import cli
from epp.director import Director
from minimal_extproc import Minimal  # bench/ is on sys.path when this script runs


class MinimalStream:
    """A ``StreamHandler`` (and what ``ExtProcServicer`` builds per stream) answering as ``minimal`` does."""

    request_id = ""
    over = False  # minimal waits for Envoy's close too
    minimal: Minimal

    def __init__(self, director: Director, max_body_bytes: int) -> None:
        self.state: dict[str, object] = {}

    def handle(self, message: pb.ProcessingRequest) -> list[pb.ProcessingResponse]:
        return self.minimal.replies(message, self.state)

    def close(self) -> None:
        """Nothing was routed, so nothing to release."""


def main() -> int:
    endpoints = sys.argv[sys.argv.index("--static-endpoints") + 1]
    MinimalStream.minimal = Minimal(endpoints.split(",")[0].split("@")[0])
    servicer_module.RequestStream = MinimalStream  # type: ignore[attr-defined,assignment]  # the one swap
    sys.argv[0] = "epp"
    return cli.main()


if __name__ == "__main__":
    raise SystemExit(main())
