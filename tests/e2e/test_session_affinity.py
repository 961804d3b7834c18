"""Plugin response headers through a real Envoy: the session-affinity token pins a conversation.

(Endpoints-file reload through Envoy is covered by test_endpoints_file.py.)"""

from __future__ import annotations

from tests.e2e.harness import Stack, chat, post


async def test_session_token_keeps_a_conversation_on_its_engine(stack: Stack) -> None:
    envoy = stack.envoy("session-affinity")
    first = await post(envoy, chat(content="turn 1"))
    assert first.status == 200, first.body
    token = first.headers["x-session-token"]  # set by session-affinity-scorer in the response-headers phase
    engine = first.json()["engine"]["name"]
    followups = [await post(envoy, chat(content=f"turn {i}"), headers={"x-session-token": token}) for i in range(2, 8)]
    assert {r.json()["engine"]["name"] for r in followups} == {engine}
    assert {r.headers["x-session-token"] for r in followups} == {token}
    # Without a token every endpoint scores 0 and the picker breaks the tie at random: sessions pin, nothing else does.
    strangers = [await post(envoy, chat(content=f"stranger {i}")) for i in range(12)]
    assert len({r.json()["engine"]["name"] for r in strangers}) > 1
