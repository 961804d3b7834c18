from __future__ import annotations

import pytest

from epp.datastore import Datastore
from epp.discovery.static import StaticDiscovery, parse_static_endpoints


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("10.0.0.1:8000", [("10.0.0.1", 8000)]),
        (" 10.0.0.1:8000 , 10.0.0.2:9000,", [("10.0.0.1", 8000), ("10.0.0.2", 9000)]),
        ("[fd00::1]:8000", [("fd00::1", 8000)]),
        ("localhost:8000", [("localhost", 8000)]),
    ],
)
def test_parse(spec: str, expected: list[tuple[str, int]]) -> None:
    assert parse_static_endpoints(spec) == [(*e, None) for e in expected]


def test_an_events_port_per_endpoint_becomes_its_label() -> None:
    assert parse_static_endpoints("10.0.0.1:8000@5557,[fd00::1]:8001@5558") == [
        ("10.0.0.1", 8000, 5557), ("fd00::1", 8001, 5558)
    ]


async def test_events_ports_label_the_endpoints() -> None:
    store = Datastore()
    endpoints = await StaticDiscovery("127.0.0.1:8000@5557,127.0.0.1:8001").start(store)
    assert [e.labels for e in endpoints] == [{"epp/kv-events-port": "5557"}, {}]


@pytest.mark.parametrize("spec", ["", ",", "10.0.0.1", "10.0.0.1:", ":8000", "10.0.0.1:x", "10.0.0.1:70000",
                                  "fd00::1:8000", "[fd00::1]8000", "10.0.0.1:8000@", "10.0.0.1:8000@x",
                                  "10.0.0.1:8000@70000"])
def test_parse_rejects(spec: str) -> None:
    with pytest.raises(ValueError):
        parse_static_endpoints(spec)


async def test_start_fills_the_datastore_with_ip_literals() -> None:
    store = Datastore()
    endpoints = await StaticDiscovery("localhost:8001,[::1]:8002,127.0.0.1:8001").start(store)
    assert store.synced
    names = sorted(e.name for e in endpoints)
    assert sorted(s.name for s in store.endpoints()) == names
    assert "[::1]:8002" in names
    assert all(e.address in ("127.0.0.1", "::1") for e in endpoints)  # localhost resolved once, to an IP


async def test_unresolvable_host_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="does not resolve"):
        await StaticDiscovery("no-such-host.invalid:8000").start(Datastore())
