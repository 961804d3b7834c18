from __future__ import annotations

import pytest

from epp.request import RequestError
from epp.request.body import BodyBuffer


def test_collects_chunks_up_to_the_limit() -> None:
    buf = BodyBuffer(limit=6)
    for chunk in (b"ab", b"", b"cd", b"ef"):
        buf.append(chunk)
    assert (buf.getvalue(), len(buf)) == (b"abcdef", 6)
    assert buf.getvalue() == b"abcdef"


def test_chunk_crossing_the_limit_is_413_and_not_kept() -> None:
    buf = BodyBuffer(limit=5)
    buf.append(b"abc")
    with pytest.raises(RequestError) as info:
        buf.append(b"def")
    assert info.value.status == 413
    assert buf.getvalue() == b"abc"


def test_empty_buffer() -> None:
    assert BodyBuffer(0).getvalue() == b""
