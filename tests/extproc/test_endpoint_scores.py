"""``--emit-endpoint-scores``: the primary profile's score of every candidate (picked or not) in the
routing reply's ``envoy.lb`` metadata, keyed ip:port, in both request body modes; absent without the flag."""

from __future__ import annotations

import pytest
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb

from epp.datastore import EndpointMetrics
from epp.extproc.stream import RequestStream
from tests.extproc.builders import BUFFERED, CHAT_BODY, make_director, metadata_destination, request_body, request_headers

POOL = ("10.0.0.1:8000", "10.0.0.2:8000", "10.0.0.3:8000")
CONFIG = """\
apiVersion: llm-d.ai/v1alpha1
kind: EndpointPickerConfig
plugins: [{type: queue-scorer}, {type: kv-cache-utilization-scorer}, {type: max-score-picker}]
schedulingProfiles:
- name: default
  plugins: [{pluginRef: queue-scorer, weight: 2}, {pluginRef: kv-cache-utilization-scorer, weight: 3}, {pluginRef: max-score-picker}]
"""


def route(emit: bool, mode: int | None = None) -> pb.ProcessingResponse:
    director = make_director(*POOL, config=CONFIG)
    director.emit_endpoint_scores = emit
    now = director.datastore.clock.now()
    for hostport, (waiting, kv) in zip(POOL, ((0, 0.0), (5, 0.5), (10, 1.0))):
        director.datastore.update_metrics(hostport, EndpointMetrics(scraped_at=now, waiting=waiting, kv_usage=kv))
    stream = RequestStream(director, 1 << 20)
    headers = request_headers() if mode is None else request_headers(mode=mode)
    replies = [*stream.handle(headers), *stream.handle(request_body(CHAT_BODY, eos=True))]
    return next(r for r in replies if r.HasField("dynamic_metadata"))


@pytest.mark.parametrize("mode", [None, BUFFERED], ids=["duplex", "buffered"])
def test_scores_of_every_candidate_ride_in_envoy_lb_metadata(mode: int | None) -> None:
    reply = route(True, mode)
    lb = reply.dynamic_metadata.fields["envoy.lb"].struct_value.fields
    scores = {k: v.number_value for k, v in lb["x-gateway-destination-endpoint-scores"].struct_value.fields.items()}
    assert set(scores) == set(POOL)
    # queue and KV scores 1, 0.5, 0 (least loaded first), weighted 2 and 3
    assert scores == {"10.0.0.1:8000": 5.0, "10.0.0.2:8000": 2.5, "10.0.0.3:8000": 0.0}
    assert metadata_destination(reply) == "10.0.0.1:8000"


def test_no_scores_without_the_flag() -> None:
    lb = route(False).dynamic_metadata.fields["envoy.lb"].struct_value.fields
    assert "x-gateway-destination-endpoint-scores" not in lb
