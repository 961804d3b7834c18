"""Fuzzing the real grpc.aio picker: whatever a client sends, each stream ends in replies or a clean status.

The server runs on its own event loop in a background thread (hypothesis drives synchronous tests), and
a synchronous gRPC client sends each generated sequence in one go, the way a misbehaving gateway would.
Allowed endings: OK, or INVALID_ARGUMENT for an ext_proc protocol violation. INTERNAL or UNKNOWN would
mean the servicer crashed. After all examples the same server still routes a good request and holds
no in-flight request.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator

import grpc
import pytest
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as pb_grpc
from hypothesis import HealthCheck, given, settings

from epp.director import Director
from epp.extproc.health import HealthService
from epp.extproc.limits import StreamLimiter
from epp.extproc.server import PickerServer
from epp.extproc.servicer import ExtProcServicer
from tests.extproc.builders import CHAT_BODY, make_director, request_body, request_headers, set_headers
from tests.extproc.fuzz_inputs import message_sequences, request_then_split_body
from tests.extproc.test_fuzz_stream import assert_nothing_held, check_reply

POOL = ("10.0.0.1:8000", "10.0.0.2:8000")
MAX_BODY = 64 * 1024
FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                                                       HealthCheck.function_scoped_fixture])
CLEAN_ENDINGS = (grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT)


class ThreadedPicker:
    """A ``PickerServer`` on 127.0.0.1 whose event loop runs in a daemon thread until ``close``."""

    def __init__(self, native: bool = False) -> None:
        """``native``: epp's own HTTP/2 transport instead of grpc.aio (tests/extproc/h2/fuzz_frames.py)."""
        self.director: Director = make_director(*POOL)
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="fuzz-picker", daemon=True)
        self._thread.start()
        self.limiter = StreamLimiter(1000, MAX_BODY, registry=self.director.telemetry.registry)
        servicer = ExtProcServicer(self.director, max_body_bytes=MAX_BODY, limiter=self.limiter)
        self.server = PickerServer(servicer, HealthService(lambda: True), port=0, health_port=0, host="127.0.0.1",
                                   max_message_bytes=MAX_BODY, native=native)
        self._run(self.server.start())
        self.channel = grpc.insecure_channel(f"127.0.0.1:{self.server.port}")
        self.stub = pb_grpc.ExternalProcessorStub(self.channel)

    def _run(self, coro: object) -> None:
        asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout=30)  # type: ignore[arg-type]

    def exchange(self, messages: list[pb.ProcessingRequest]) -> tuple[grpc.StatusCode, list[pb.ProcessingResponse]]:
        call = self.stub.Process(iter(messages), timeout=20)
        replies: list[pb.ProcessingResponse] = []
        try:
            replies.extend(call)
        except grpc.RpcError:
            pass
        return call.code(), replies

    def held(self) -> None:
        """Assert nothing is held, from the server's own thread (the director is not thread-safe)."""
        async def check() -> None:
            assert_nothing_held(self.director)
            assert len(self.limiter) == 0 and self.limiter.buffered_bytes() == 0
        self._run(check())

    def close(self) -> None:
        self.channel.close()
        self._run(self.server.stop(0))
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=10)
        self.loop.close()


@pytest.fixture(scope="module")
def picker() -> Iterator[ThreadedPicker]:
    owned = ThreadedPicker()
    try:
        yield owned
    finally:
        owned.close()


def settle(picker: ThreadedPicker) -> None:
    """Streams are closed on the server shortly after the client sees the status; wait (bounded) for that."""
    for _ in range(200):
        try:
            picker.held()
            return
        except AssertionError:
            threading.Event().wait(0.01)
    picker.held()


@FUZZ
@given(messages=message_sequences)
def test_any_sequence_over_grpc_ends_cleanly(picker: ThreadedPicker, messages: list[pb.ProcessingRequest]) -> None:
    code, replies = picker.exchange(messages)
    assert code in CLEAN_ENDINGS, code
    for reply in replies:
        check_reply(reply)
    settle(picker)


@FUZZ
@given(messages=request_then_split_body())
def test_hostile_body_over_grpc_is_routed_or_refused(picker: ThreadedPicker, messages: list[pb.ProcessingRequest]) -> None:
    code, replies = picker.exchange(messages)
    assert code == grpc.StatusCode.OK
    assert replies and replies[0].WhichOneof("response") in ("request_headers", "immediate_response")
    settle(picker)


def test_server_still_routes_after_the_fuzzing(picker: ThreadedPicker) -> None:
    """Runs last in this module: the server that took every example above still serves."""
    code, replies = picker.exchange([request_headers(), request_body(CHAT_BODY, eos=True)])
    assert code == grpc.StatusCode.OK
    assert set_headers(replies[0].request_headers.response)["x-gateway-destination-endpoint"] in POOL
    picker.exchange([request_headers(), request_body(CHAT_BODY, eos=True), pb.ProcessingRequest()])
    settle(picker)
