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
    assert parse_static_endpoints(spec) == expected


@pytest.mark.parametrize("spec", ["", ",", "10.0.0.1", "10.0.0.1:", ":8000", "10.0.0.1:x", "10.0.0.1:70000",
                                  "fd00::1:8000", "[fd00::1]8000"])
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
