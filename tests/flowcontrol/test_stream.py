"""The ext_proc stream with flow control: a held request's answer is awaited, and a stream that ends
while its request waits (or after it was dispatched but before the answer went out) leaks nothing."""

from __future__ import annotations

import asyncio

from epp.director import RoutingDecision
from epp.extproc.collect import Deferred, Phase
from epp.extproc.stream import RequestStream
from tests.extproc.builders import CHAT_BODY, make_director, request_body, request_headers
from tests.flowcontrol.test_controller import Rig


def rig() -> Rig:
    return Rig("flowControl: {}\n", per_endpoint=1)


def held_stream(r: Rig) -> tuple[RequestStream, Deferred[object]]:
    stream = RequestStream(r.director)
    assert stream.handle(request_headers()) == []
    deferred = stream.handle(request_body(CHAT_BODY, eos=True))
    assert isinstance(deferred, Deferred) and stream.phase is Phase.ADMITTING
    return stream, deferred


async def test_a_held_request_is_answered_once_dispatched() -> None:
    r = rig()
    r.send("busy")
    stream, deferred = held_stream(r)
    waiter = asyncio.create_task(deferred.replies())
    await asyncio.sleep(0)
    assert not waiter.done() and r.controller.waiting == 1
    r.finish("busy")  # room: the held request is scheduled and its replies built
    replies = await waiter
    assert stream.phase is Phase.ROUTED and replies[0].HasField("request_headers")
    stream.close()
    assert all(s.inflight_requests == 0 for s in r.store.endpoints())


async def test_cancelled_wait_leaves_the_queue() -> None:
    r = rig()
    r.send("busy")
    stream, deferred = held_stream(r)
    waiter = asyncio.create_task(deferred.replies())
    await asyncio.sleep(0)
    waiter.cancel()  # the gRPC call was cancelled (client or Envoy gave up)
    await asyncio.gather(waiter, return_exceptions=True)
    stream.close()
    assert r.controller.waiting == 0


def test_stream_closed_while_waiting_leaves_the_queue() -> None:
    r = rig()
    r.send("busy")
    stream, _ = held_stream(r)
    stream.close()
    assert r.controller.waiting == 0
    r.finish("busy")
    assert all(s.inflight_requests == 0 for s in r.store.endpoints())


def test_dispatched_but_never_answered_is_released() -> None:
    r = rig()
    r.send("busy")
    stream, deferred = held_stream(r)
    r.finish("busy")  # dispatched: routed and counted in flight, but the transport never sent the answer
    assert deferred.ready and sum(s.inflight_requests for s in r.store.endpoints()) == 1
    stream.close()
    assert sum(s.inflight_requests for s in r.store.endpoints()) == 0


def test_without_flow_control_the_answer_is_immediate() -> None:
    stream = RequestStream(make_director("10.0.0.1:8000"))
    stream.handle(request_headers())
    replies = stream.handle(request_body(CHAT_BODY, eos=True))
    assert isinstance(replies, list) and stream.phase is Phase.ROUTED
    assert isinstance(stream.decision, RoutingDecision)
