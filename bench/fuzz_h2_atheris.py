"""Coverage-guided fuzzing of epp's native HTTP/2 transport with atheris (libFuzzer), opt-in.

Complements the hypothesis fuzzer (bench/fuzz_h2.py, which drives real sockets and the whole server): here
libFuzzer mutates raw bytes after the connection preface, guided by the coverage of every loaded Python
function, and each input goes straight into one ``H2Connection`` (an in-memory transport, the real picker
behind it), thousands of inputs a second. Invariants per input: no traceback logged and no exception left to
the event loop; a connection the server closed wrote a GOAWAY first; once the connection is gone nothing is
held (no admitted stream, no in-flight request). Needs the ``fuzz`` extra (``pip install 'atheris>=2.3,<3'``).

    nice -n 10 python bench/fuzz_h2_atheris.py -max_total_time=300 [libFuzzer flags ...]
"""

from __future__ import annotations

import asyncio
import logging
import sys
from pathlib import Path
from typing import Any

import atheris

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
# Coverage feedback from the transport, the HPACK decoder and the ext_proc message handling only: instrumenting
# every loaded function (atheris.instrument_all) takes minutes on Python 3.11.
with atheris.instrument_imports(include=["epp.extproc", "hpack"]):
    import hpack

    from epp.extproc.h2 import wire
    from epp.extproc.h2.connection import H2Connection
    from epp.extproc.limits import StreamLimiter
    from epp.extproc.servicer import ExtProcServicer
    from tests.extproc.builders import make_director
    from tests.extproc.h2.fuzz_frames import GRPC_HEADERS, PROCESS, _Errors
    from tests.extproc.test_fuzz_server import MAX_BODY, POOL
    from tests.extproc.test_fuzz_stream import assert_nothing_held


class MemoryTransport:
    """What ``H2Connection`` needs of an asyncio transport, writing into a buffer."""

    def __init__(self) -> None:
        self.out = bytearray()
        self.closed = False

    def write(self, data: bytes) -> None:
        self.out += data

    def writelines(self, parts: list[bytes | memoryview]) -> None:
        for part in parts:
            self.out += part

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    abort = close

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        pass

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


def goaway_written(out: bytes) -> bool:
    pos = 0
    while len(out) - pos >= 9:
        hi, lo, kind, *_ = wire.FRAME_HEADER.unpack_from(out, pos)
        if kind == wire.GOAWAY:
            return True
        pos += 9 + (hi << 16 | lo)
    return False


def main() -> None:
    director = make_director(*POOL)
    limiter = StreamLimiter(1000, MAX_BODY, registry=director.telemetry.registry)
    servicer = ExtProcServicer(director, max_body_bytes=MAX_BODY, limiter=limiter)
    loop = asyncio.new_event_loop()
    unhandled: list[dict[str, Any]] = []
    loop.set_exception_handler(lambda _, context: unhandled.append(context))
    errors = _Errors()
    logging.getLogger("epp").addHandler(errors)
    logging.getLogger("epp").setLevel(logging.ERROR)  # the transport's warnings would flood the terminal
    opening = wire.PREFACE + wire.settings({}) + wire.frame(wire.HEADERS, wire.END_HEADERS, 1,
                                                            hpack.Encoder().encode(GRPC_HEADERS))

    async def one(data: bytes) -> None:
        transport = MemoryTransport()
        connection = H2Connection(lambda path: servicer.new_call() if path == PROCESS else None, MAX_BODY,
                                  lambda _: None, 100, stall_timeout=0.01)
        connection.connection_made(transport)  # type: ignore[arg-type]
        # a prefix opens stream 1 (half the inputs), so the mutations reach the gRPC message path quickly
        connection.data_received(opening + data if data[:1] < b"\x80" else wire.PREFACE + data)
        await asyncio.sleep(0)
        if transport.closed:
            assert goaway_written(bytes(transport.out)), "closed without a GOAWAY"
        connection.connection_lost(None)
        await asyncio.sleep(0)

    def test_one_input(data: bytes) -> None:
        errors.records.clear()
        unhandled.clear()
        loop.run_until_complete(one(data))
        assert not errors.records, errors.records[:3]
        assert not unhandled, unhandled[:3]
        assert len(limiter) == 0 and limiter.buffered_bytes() == 0
        assert_nothing_held(director)

    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
