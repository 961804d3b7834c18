from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from tests.extproc.h2.rawclient import Served, serving


@pytest.fixture
async def served() -> AsyncIterator[Served]:
    async with serving() as harness:
        yield harness
