"""Reading Envoy's JSON access log back."""

from __future__ import annotations

from pathlib import Path

from epp.envoy.accesslog import AccessLogEntry, read_entries, wait_for

LINE = (
    b'{"request_id":"r1","method":"POST","path":"/v1/completions","code":200,"flags":"-","details":"via_upstream",'
    b'"upstream":"127.0.0.1:8001","destination":"127.0.0.1:8001","metadata":"127.0.0.1:8001","attempts":1,'
    b'"duration_ms":7,"bytes_received":10,"bytes_sent":20}'
)
REJECTED = b'{"request_id":"r2","code":400,"flags":"-","upstream":null,"destination":null,"attempts":0}'


def test_entries_parse_and_dashes_become_none(tmp_path: Path) -> None:
    path = tmp_path / "access.log"
    path.write_bytes(LINE + b"\n" + REJECTED + b"\n")
    first, second = read_entries(path)
    assert first == AccessLogEntry("r1", "POST", "/v1/completions", 200, None, "via_upstream", "127.0.0.1:8001",
                                   "127.0.0.1:8001", "127.0.0.1:8001", 1, 7)  # fmt: skip
    assert (second.code, second.upstream, second.destination, second.attempts, second.path) == (400, None, None, 0, None)


def test_a_line_still_being_flushed_is_not_read(tmp_path: Path) -> None:
    path = tmp_path / "access.log"
    path.write_bytes(LINE + b"\n" + REJECTED[:20])
    assert [e.request_id for e in read_entries(path)] == ["r1"]


def test_wait_for_returns_what_is_there_after_the_timeout(tmp_path: Path) -> None:
    path = tmp_path / "access.log"
    assert wait_for(path, ["r1"], timeout=0.1) == {}
    path.write_bytes(LINE + b"\n")
    assert set(wait_for(path, ["r1", "missing"], timeout=0.1)) == {"r1"}
