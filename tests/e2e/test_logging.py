"""Logs through a real stack at the most verbose level: JSON lines, request ids, and never a secret.

The secret rides in the prompt, in ``authorization``, in another header and in a rejected body; after
the run every byte epp wrote (and Envoy's access log) is searched for it.
"""

from __future__ import annotations

from collections.abc import Iterator

import orjson
import pytest

from epp.envoy.stack import LocalGateway
from tests.e2e.harness import Stack, chat, post

SECRET = "sk-s3cr3t-7c1e9a"


@pytest.fixture(scope="module")
def gateway(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalGateway]:
    gw = LocalGateway(stack.engines.upstreams, tmp_path_factory.mktemp("logging"),
                      picker_args=["--log-format", "json", "-v", "9", "--max-body-bytes", "4096"])
    with gw:
        yield gw


async def test_secrets_never_reach_the_logs_and_lines_carry_request_ids(gateway: LocalGateway) -> None:
    auth = {"authorization": f"Bearer {SECRET}", "x-api-key": SECRET}
    routed = await post(gateway.envoy, chat(content=f"my key is {SECRET}"), headers=auth)
    assert routed.status == 200, routed.body
    bad_json = await post(gateway.envoy, b'{"model": "m", "messages": [{"content": "' + SECRET.encode() + b'"', headers=auth)
    no_model = await post(gateway.envoy, {"messages": [{"role": "user", "content": SECRET}]}, headers=auth)
    too_big = await post(gateway.envoy, {"model": "m", "prompt": SECRET * 500}, path="/v1/completions", headers=auth)
    assert (bad_json.status, no_model.status, too_big.status) == (400, 400, 413)
    stream = await post(gateway.envoy, chat(content=SECRET, stream=True), headers=auth)
    assert stream.status == 200
    served = routed.json()["engine"]
    assert served["headers"]["x-request-id"] == routed.request_id  # the id the client sent reaches the engine
    gateway.stop()  # flush and close every log

    epp_log = (gateway.workdir / "epp.log").read_bytes()
    for path in gateway.workdir.rglob("*"):
        if path.is_file():
            assert SECRET.encode() not in path.read_bytes(), path
    lines = [orjson.loads(line) for line in epp_log.splitlines() if line.strip()]
    assert lines and all({"ts", "level", "logger", "msg"} <= set(line) for line in lines)
    assert any(line["level"] == "debug" for line in lines)  # the most verbose level was on
    by_id = {line.get("request_id"): line for line in lines if "request_id" in line}
    assert by_id[routed.request_id]["endpoint"] == served["headers"]["x-gateway-destination-endpoint"]
    for reply, status, reason in ((bad_json, 400, "invalid_json"), (no_model, 400, "model_not_found"),
                                  (too_big, 413, "request_too_large")):
        line = by_id[reply.request_id]
        assert (line["status"], line["reason"], line["level"]) == (status, reason, "info")
